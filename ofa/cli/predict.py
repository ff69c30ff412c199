"""``ofa-predict``: run a checkpoint on one or more images and print the predictions.

    ofa-predict --checkpoint CKPT --image IMG [IMG ...] [--task T] [--text TEXT] [--caption PREMISE]
                [--batch-size N] [--bpe-dir D] [--ema] [--device cpu] [--draw OUT.png] [--json]
                [--set KEY=VALUE ...] [--user-dir PLUGIN] [--local-files-only] [--verbose]
    ofa-predict --checkpoint CKPT --task image_gen --text CAPTION --vqgan-path VQGAN --out IMG.png
    ofa-predict --onnx EXPORT_DIR --image IMG [...]      # an `ofa-export onnx` folder, run by onnxruntime

Several images (``--image a.png b.png`` or ``--image`` repeated) run in batches of ``--batch-size`` and
print one result each, in order (``--json``: one JSON list). ``--text`` and ``--caption`` apply to every
image. Text-to-image (``image_gen``) takes no ``--image``: ``--text`` is the caption, ``--out`` the PNG to
write (more samples, ``--set sampling_times=4``, go beside it as ``IMG_1.png`` ...).

``--task`` defaults to the checkpoint's own task; aliases such as ``grounding``, ``vqa``, ``entailment``
and ``classify`` work. ``--text`` is the question (VQA), the referring expression (grounding) or the
hypothesis (entailment). ``--set`` passes generation arguments (``beam_size=3``) or task options
(``ans2label_file=answers.json``); values are read as JSON where they parse, else as strings.
``--draw`` writes a copy of the image with the box and the expression drawn (grounding) or with the
prediction written on it (other tasks); with several images, ``OUT_1.png`` ... for the second and later.
Every result prints ``logprob`` / ``prob``, the log-probability of the prediction and its exp (see
``ofa.inference``).

``--onnx DIR`` runs an ``ofa-export onnx`` folder instead of a checkpoint: the same preprocessing and results,
the beam search of ``ofa_runtime`` on onnxruntime (closed-set tasks decode by trie-constrained beam search;
see ``ofa.export.predict``).

A mistake in what was given (a missing image or checkpoint, an unknown task or option, a missing
``--text``) is one line ``ofa-predict: error: ...`` and exit status 2 (``ofa.cli.common.run_cli``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from ofa.errors import ConfigError


def parse_sets(items: List[str]) -> Dict[str, Any]:
    """``--set KEY=VALUE`` items -> ``{key: value}`` (``-`` in keys read as ``_``; values as JSON where they
    parse, else strings); ``ConfigError`` for an item without ``=`` or a key given twice."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key in out:
            raise ConfigError(f"--set {key} is given twice")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-predict", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", "--path", help="checkpoint path, URL or published name")
    which.add_argument("--onnx", metavar="EXPORT_DIR", help="an `ofa-export onnx` folder, run with onnxruntime")
    p.add_argument("--image", nargs="+", action="extend", default=[], metavar="IMG",
                   help="image file(s) (every task but image_gen); several run in batches")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--task", default=None, help="task or alias (default: the checkpoint's task)")
    p.add_argument("--text", default=None, help="question / referring expression / hypothesis (for every image)")
    p.add_argument("--caption", default=None, help="entailment: the text premise")
    p.add_argument("--bpe-dir", default=None, help="tokenizer folder (default: the checkpoint's)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--draw", metavar="OUT", default=None, help="write the image with the prediction drawn on it")
    p.add_argument("--json", action="store_true", help="print the result as JSON (a list for several images)")
    p.add_argument("--out", default=None, help="image_gen: PNG file for the generated image")
    p.add_argument("--vqgan-path", default=None, help="image_gen: VQGAN checkpoint (or folder) decoding the codes")
    p.add_argument("--local-files-only", action="store_true",
                   help="take a published name or URL from the download cache only, never download")
    p.add_argument("--user-dir", default=None,
                   help="plugin folder with extra tasks (as for ofa-train); a task runs here once its plugin "
                        "calls ofa.inference.register_inference")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="generation argument or task option (repeatable)")
    return p


def format_result(result: Dict[str, Any]) -> str:
    """Human-readable lines for a result of ``ofa.inference_model``."""
    from ofa.inference import INFERENCE

    w, h = result["image_size"]
    spec = INFERENCE[result["task"]]
    what = "image" if spec.needs_image else "generated"
    return "\n".join([f"task: {result['task']} ({what} {w}x{h})", *spec.lines(result)])


def draw_paths(path: str, n: int) -> List[str]:
    """Where ``--draw PATH`` writes the drawings of ``n`` images: ``PATH`` for the first, ``STEM_i.EXT`` for the
    ``i``-th after it (as ``image_gen`` names its extra samples)."""
    stem, ext = os.path.splitext(path)
    return [path if i == 0 else f"{stem}_{i}{ext or '.png'}" for i in range(n)]


def image_format(path: str) -> str:
    """The Pillow format a file name's extension asks for (``PNG`` when it names none Pillow knows)."""
    from PIL import Image

    return Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")


def check_inputs(args: argparse.Namespace) -> None:
    """The mistakes that show without loading anything: missing image files or plugin folder, ``--draw``
    without an image."""
    for path in args.image:
        if not os.path.isfile(os.path.expanduser(path)):
            raise ConfigError(f"--image {path}: no such file")
    if args.user_dir and not os.path.isdir(os.path.expanduser(args.user_dir)):
        raise ConfigError(f"--user-dir {args.user_dir}: no such folder")
    if args.draw and not args.image:
        raise ConfigError("--draw draws on the input image: give --image")
    if args.onnx:
        for option, given in (("--ema", args.ema), ("--device", args.device), ("--bpe-dir", args.bpe_dir),
                              ("--vqgan-path", args.vqgan_path), ("--out", args.out)):
            if given:
                raise ConfigError(f"{option} does not apply to --onnx (the export holds its weights, tokenizer and "
                                  f"settings, and runs on onnxruntime's CPU)")


def predict_command(argv: Optional[Sequence[str]] = None) -> int:
    """``ofa-predict`` itself; ``main`` runs it under ``run_cli`` (one-line errors, exit status 2)."""
    args = build_parser().parse_args(argv)
    check_inputs(args)
    from ofa.cli.common import import_user_dir, setup

    setup()
    import_user_dir(args.user_dir)
    from ofa.io_utils import atomic_output
    from ofa.inference import INFERENCE, draw_result, inference_model

    overrides = parse_sets(args.set)
    for key, value in (("vqgan_path", args.vqgan_path), ("out", args.out)):
        if value:
            overrides[key] = value
    several = len(args.image) > 1
    image = args.image if several else (args.image[0] if args.image else None)
    if args.onnx:
        from ofa.export.predict import OnnxPredictor

        results = OnnxPredictor(args.onnx).predict(image, text=args.text, task=args.task, caption=args.caption,
                                                   batch_size=args.batch_size, **overrides)
    else:
        results = inference_model(args.checkpoint, image, task=args.task, text=args.text, bpe_dir=args.bpe_dir,
                                  ema=args.ema, device=args.device, caption=args.caption, batch_size=args.batch_size,
                                  local_files_only=args.local_files_only, **overrides)
    results = results if several else [results]
    drawn = []
    if args.draw and INFERENCE[results[0]["task"]].needs_image:
        for path, result, target in zip(args.image, results, draw_paths(args.draw, len(results))):
            with atomic_output(target) as tmp:
                draw_result(path, result, label=args.text).save(tmp, format=image_format(target))
            drawn.append(target)
    for result in results:
        result.pop("images", None)  # PIL images (image_gen): written with --out
    if args.json:
        print(json.dumps(results if several else results[0]))
        return 0
    blocks = []
    for i, result in enumerate(results):
        lines = [f"image: {args.image[i]}"] if several else []
        lines.append(format_result(result))
        if i < len(drawn):
            lines.append(f"drawn: {drawn[i]}")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ofa.cli.common import run_cli

    return run_cli("ofa-predict", predict_command, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
