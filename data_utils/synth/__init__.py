"""Embedded benchmark: a seeded synthetic multi-task dataset in the official OFA formats.

Rendered scenes of 2-4 flat shapes (circle, square, triangle, diamond, star; 6 colours; small/large) on
light textured backgrounds, with captions, referring expressions (boxes), VQA questions with ten
annotator answers, entailment hypotheses, image-classification labels and a text corpus, split into
train / valid (in-distribution) / test (compositional: held-out colour-shape pairs). Small enough for a
tiny OFA model to learn on a CPU in minutes. Image ``i`` depends only on the seed and ``i``.

Boxes everywhere are ``x0,y0,x1,y1`` in pixels of the image, origin top-left, the tight box of the
object's visible pixels (columns x0..x1-1, rows y0..y1-1).

Modules: ``vocab`` (closed vocabulary), ``scenes`` (rendering), ``language`` (texts), ``splits``
(compositional split), ``records`` (one image -> rows), ``writer`` (files, manifest), ``cli`` (``main``),
``breakdown`` (an evaluation's scores per question / hypothesis kind and expression form; what each
grounding box hits).
"""
from .cli import main
from .records import SynthConfig, make_record
from .writer import generate

__all__ = ["main", "generate", "SynthConfig", "make_record"]
