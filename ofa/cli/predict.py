"""``ofa-predict``: run a checkpoint on one image and print the prediction.

    ofa-predict --checkpoint CKPT --image IMG [--task T] [--text TEXT] [--caption PREMISE]
                [--bpe-dir D] [--ema] [--device cpu] [--draw OUT.png] [--json] [--set KEY=VALUE ...]
                [--user-dir PLUGIN]
    ofa-predict --checkpoint CKPT --task image_gen --text CAPTION --vqgan-path VQGAN --out IMG.png

Text-to-image (``image_gen``) takes no ``--image``: ``--text`` is the caption, ``--out`` the PNG to
write (more samples, ``--set sampling_times=4``, go beside it as ``IMG_1.png`` ...).

``--task`` defaults to the checkpoint's own task; aliases such as ``grounding``, ``vqa``, ``entailment``
and ``classify`` work. ``--text`` is the question (VQA), the referring expression (grounding) or the
hypothesis (entailment). ``--set`` passes generation arguments (``beam_size=3``) or task options
(``ans2label_file=answers.json``); values are read as JSON where they parse, else as strings.
``--draw`` writes a copy of the image with the box and the expression drawn (grounding) or with the
prediction written on it (other tasks). See ``ofa.inference``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional


def _parse_sets(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-predict", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", "--path", required=True, help="checkpoint path, URL or published name")
    p.add_argument("--image", default=None, help="image file (every task but image_gen)")
    p.add_argument("--task", default=None, help="task or alias (default: the checkpoint's task)")
    p.add_argument("--text", default=None, help="question / referring expression / hypothesis")
    p.add_argument("--caption", default=None, help="entailment: the text premise")
    p.add_argument("--bpe-dir", default=None, help="tokenizer folder (default: the checkpoint's)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--draw", metavar="OUT", default=None, help="write the image with the prediction drawn on it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=None, help="image_gen: PNG file for the generated image")
    p.add_argument("--vqgan-path", default=None, help="image_gen: VQGAN checkpoint (or folder) decoding the codes")
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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ofa.cli.common import import_user_dir, setup

    setup()
    import_user_dir(args.user_dir)
    from ofa.checkpoint import CheckpointError
    from ofa.hub import HubError
    from ofa.inference import INFERENCE, draw_result, inference_model

    try:
        overrides = _parse_sets(args.set)
        if args.vqgan_path:
            overrides["vqgan_path"] = args.vqgan_path
        if args.out:
            overrides["out"] = args.out
        result = inference_model(args.checkpoint, args.image, task=args.task, text=args.text, bpe_dir=args.bpe_dir,
                                 ema=args.ema, device=args.device, caption=args.caption, **overrides)
        result.pop("images", None)  # PIL images (image_gen): written with --out
        if args.draw and INFERENCE[result["task"]].needs_image:
            draw_result(args.image, result, label=args.text).save(args.draw)
    except (OSError, ValueError, TypeError, CheckpointError, HubError) as e:
        message = str(e)
        if isinstance(e, OSError) and e.strerror and e.filename and str(e.filename) in e.strerror:
            message = e.strerror  # hub / image errors already name the path
        print(f"ofa-predict: error: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(format_result(result))
        if args.draw:
            print(f"drawn: {args.draw}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
