"""``ofa-export``: write a checkpoint in a form made for serving.

    ofa-export onnx CHECKPOINT OUT_DIR [--task T] [--bpe-dir D] [--ema] [--set KEY=VALUE ...] [--opset N]
    ofa-export safetensors CHECKPOINT OUT_DIR [--bpe-dir D] [--ema]

``onnx`` writes the encoder and one decoder step as ONNX graphs with the task's beam-search settings and the
tokenizer files (``ofa.export.onnx_export``); ``ofa-predict --onnx OUT_DIR`` and the torch-free
``ofa_runtime`` run them. ``--set`` takes generation arguments (``beam_size=3``) and task options
(``patch_image_size=384``) as ``ofa-predict`` does; the image size of the graphs is the task's
``patch_image_size``. ``safetensors`` writes ``model.safetensors`` + ``config.json`` + the tokenizer files,
which ``ofa.load_model`` reads. Both load the checkpoint with ``ofa.load_model``: LoRA adapters are merged into
the weights, so the export is a plain model. Mistakes end in one line ``ofa-export: error: ...``, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ofa.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-export", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="format", required=True, metavar="{onnx,safetensors}")
    for name, help_text in (("onnx", "ONNX graphs for onnxruntime (ofa-predict --onnx, ofa_runtime)"),
                            ("safetensors", "model.safetensors + config.json + tokenizer files")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("checkpoint", help="checkpoint path, URL or published name")
        s.add_argument("out_dir", help="the folder to write (replaced once the new export is complete)")
        s.add_argument("--bpe-dir", default=None, help="tokenizer folder (default: the checkpoint's)")
        s.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights")
        s.add_argument("--local-files-only", action="store_true", help="never download a published name")
        if name == "onnx":
            s.add_argument("--task", default=None, help="task or alias (default: the checkpoint's task)")
            s.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                           help="generation argument or task option (repeatable)")
            s.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
            s.add_argument("--user-dir", default=None, help="plugin folder with extra tasks")
    return p


def export_command(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ofa.cli.common import import_user_dir, setup

    setup()
    import_user_dir(getattr(args, "user_dir", None))
    from ofa.inference import _tokenizer_dir, load

    handle = load(args.checkpoint, bpe_dir=args.bpe_dir, ema=args.ema, local_files_only=args.local_files_only)
    if args.format == "safetensors":
        from ofa.checkpoint import export_safetensors

        export_safetensors(handle.model, _tokenizer_dir(handle), args.out_dir, task_cfg=handle.info.task)
        print(f"ofa-export: wrote {args.out_dir} (model.safetensors, config.json, tokenizer files)")
        return 0
    return _export_onnx(args, handle)


def _export_onnx(args, handle) -> int:
    from ofa.cli.predict import parse_sets
    from ofa.export.onnx_export import DEFAULT_OPSET, export_onnx, generator_settings
    from ofa.inference import _tokenizer_dir, canonical_task, split_overrides

    own = handle.own_task
    if args.task is None and not own:
        raise ConfigError(f"{args.checkpoint} does not say which task it is for: give --task")
    task_name = canonical_task(args.task or own)
    task_over, gen_over = split_overrides(task_name, parse_sets(args.set))
    from fairseq.tasks import TASK_REGISTRY

    from ofa.tasks.closed_set import ClosedSetTask

    closed = issubclass(TASK_REGISTRY[task_name], ClosedSetTask)
    if closed:
        task_over["val_inference_type"] = "beamsearch"
    task = handle._task(task_name, task_over)
    try:
        generation = generator_settings(task.build_generator([handle.model], **gen_over))
    except ValueError as e:  # decoding the runtime cannot reproduce (sampling, image codes, detection's grammar)
        raise ConfigError(f"{task_name}: {e}") from None
    saved = {k: v for k, v in dict(handle.info.task).items() if k not in ("bpe_dir", "data", "ans2label_file")}
    saved.update(task_over, _name=task_name)
    answers = list(task.answer_set.answers) if closed else None
    export_onnx(handle.model, args.out_dir, tokenizer_dir=_tokenizer_dir(handle), image_size=task.cfg.patch_image_size,
                task_cfg=saved, generation=generation, dictionary=handle.dictionary, answers=answers,
                opset=args.opset or DEFAULT_OPSET)
    print(f"ofa-export: wrote {args.out_dir} ({task_name}, {task.cfg.patch_image_size} px: encoder.onnx, "
          f"decoder_step.onnx, generation.json, tokenizer files)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ofa.cli.common import run_cli

    return run_cli("ofa-export", export_command, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
