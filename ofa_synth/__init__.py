"""The embedded benchmark: seeded synthetic scenes in the official OFA data formats, and the main job
that trains and evaluates a small OFA on them (``ofa-synth``).

Rendered scenes of 2-4 flat shapes (circle, square, triangle, diamond, star; 6 colours; small / large) on
light textured backgrounds, with captions, referring expressions (boxes), VQA questions with ten
annotator answers, entailment hypotheses, image-classification labels and a text corpus, in four splits:
train, valid and test (held-out images drawn like train) and comp (compositional: every image and text
is about a (colour, shape) pair that never occurs in training). Small enough for a tiny OFA to learn on a
CPU in minutes. Image ``i`` depends only on the seed and ``i``.

Boxes everywhere are ``x0,y0,x1,y1`` in pixels of the image, origin top-left, the tight box of the
object's visible pixels (columns x0..x1-1, rows y0..y1-1).

Modules:

- the benchmark: ``vocab`` (closed vocabulary), ``scenes`` (rendering), ``language`` (texts), ``splits``
  (compositional split), ``records`` (one image -> rows), ``writer`` (files, manifest; ``ofa-synth
  generate``), ``version`` (format version);
- more sources from the same scenes: ``text`` (text-only tasks), ``pretrain`` (the ``unify`` mixture),
  ``image_gen`` (text-to-image rows and a scene checker that scores generated images);
- the main job: ``recipe`` (model and per-task budget), ``main_job`` (``ofa-synth run``), ``curves``
  (learning curves), ``figures`` (predictions drawn on test images), ``breakdown`` (scores per question /
  hypothesis kind and expression form; what each grounding box hits);
- ``cli``: the ``ofa-synth`` dispatcher.

The product (``ofa``) never imports this package; its tests and the launchers' ``--smoke`` modes use it
as their data.
"""
from ofa_synth.records import SynthConfig, make_record
from ofa_synth.writer import generate

__all__ = ["generate", "SynthConfig", "make_record"]
