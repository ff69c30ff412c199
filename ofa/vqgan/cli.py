"""``ofa-vqgan``: train, evaluate and use the discrete image tokenizer.

    ofa-vqgan train  --images FOLDER_OR_TSV --out DIR [--image-size 64] [--steps N] [--n-embed 512] ...
    ofa-vqgan eval   --model MODEL --images FOLDER_OR_TSV [--image-size 64] [--json FILE]
    ofa-vqgan encode --model MODEL --images FOLDER_OR_TSV --out codes.tsv [--image-size 256] [--center-crop 128] [--tokens]
    ofa-vqgan decode --model MODEL --codes codes.tsv --out DIR
    ofa-vqgan info   --model MODEL

MODEL is a ``model.pt`` written by ``train`` or an official taming/OFA ``last.ckpt`` (add
``--config model.yaml``; without it the architecture is inferred from the tensor shapes).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import List, Optional

import torch

from ofa.console import run_cli
from ofa.errors import ConfigError
from ofa.data_utils.codes import CodeError, code_grid, parse_codes
from ofa.io_utils import AtomicFile, atomic_output, write_atomic
from ofa.vqgan.train import TrainArgs


def _ints(text: str) -> List[int]:
    text = text.strip()
    return [int(t) for t in re.split(r"[,\s]+", text) if t] if text else []


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="image folder, image file, or TSV / HDF5 shard with an image column")
    p.add_argument("--schema", default=None, help="TSV schema name (e.g. caption, vqa, pretrain_image); default: guess")
    p.add_argument("--image-column", default=None, help="image column name or index (default: schema's 'image' / guess)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many (distinct) images")


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt from 'train', or an official taming/OFA last.ckpt")
    p.add_argument("--config", default=None, help="taming model.yaml for an official checkpoint (optional)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-vqgan", description="VQGAN image tokenizer for OFA image codes")
    sub = parser.add_subparsers(dest="command", required=True)
    d = TrainArgs(images="", out="")

    t = sub.add_parser("train", help="train a tokenizer", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_args(t)
    t.add_argument("--out", required=True, help="output folder (model.pt, config.json)")
    t.add_argument("--valid-images", default=None, help="held-out images to report quality on")
    t.add_argument("--image-size", type=int, default=d.image_size)
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--warmup", type=int, default=d.warmup)
    t.add_argument("--quantizer", choices=["ema", "vq", "gumbel"], default=d.quantizer)
    t.add_argument("--n-embed", type=int, default=d.n_embed, help="codebook size (OFA: 8192)")
    t.add_argument("--embed-dim", type=int, default=d.embed_dim, help="code vector size (gumbel: = z-channels)")
    t.add_argument("--z-channels", type=int, default=d.z_channels)
    t.add_argument("--ch", type=int, default=d.ch, help="base width")
    t.add_argument("--ch-mult", type=_ints, default=list(d.ch_mult), help="width multipliers per level; "
                   "factor = 2**(levels-1)")
    t.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks)
    t.add_argument("--attn-resolutions", type=_ints, default=list(d.attn_resolutions),
                   help="resolutions (image-size / 2**level) with attention, e.g. 8")
    t.add_argument("--norm-groups", type=int, default=d.norm_groups, help="GroupNorm groups (official 32)")
    t.add_argument("--beta", type=float, default=d.beta, help="commitment weight")
    t.add_argument("--ema-decay", type=float, default=d.ema_decay)
    t.add_argument("--kl-weight", type=float, default=d.kl_weight, help="gumbel KL-to-uniform weight")
    t.add_argument("--temperature", type=float, default=d.temperature, help="gumbel start temperature")
    t.add_argument("--temperature-min", type=float, default=d.temperature_min, help="gumbel final temperature")
    t.add_argument("--l1-weight", type=float, default=d.l1_weight)
    t.add_argument("--l2-weight", type=float, default=d.l2_weight)
    t.add_argument("--gan-weight", type=float, default=d.gan_weight, help="adversarial loss weight (0 = off)")
    t.add_argument("--gan-start", type=int, default=d.gan_start, help="step that starts the adversarial loss")
    t.add_argument("--restart-every", type=int, default=d.restart_every, help="dead-code restart period (0 = off)")
    t.add_argument("--hflip", action="store_true", help="random horizontal flips")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=d.threads, help="CPU threads")
    t.add_argument("--device", default=d.device, help="torch device (cpu, cuda, ...)")
    t.add_argument("--log-every", type=int, default=d.log_every)
    t.add_argument("--save-every", type=int, default=d.save_every, help="intermediate checkpoints (0 = end only)")
    t.add_argument("--export-official", action="store_true",
                   help="also write last.ckpt + model.yaml in the taming layout (vq/gumbel, --norm-groups 32)")

    e = sub.add_parser("eval", help="reconstruction quality (PSNR, SSIM) and codebook usage")
    _add_model_arg(e)
    _add_data_args(e)
    e.add_argument("--image-size", type=int, default=None, help="default: the model's nominal resolution")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--stochastic", action="store_true", help="sample Gumbel codes (official behaviour)")
    e.add_argument("--save-recon", default=None, help="folder for side-by-side original|reconstruction PNGs")
    e.add_argument("--json", default=None, help="also write the metrics here")

    c = sub.add_parser("encode", help="images -> code TSV (id TAB codes)")
    _add_model_arg(c)
    _add_data_args(c)
    c.add_argument("--out", required=True, help="output TSV: id, then the codes (row-major, space separated)")
    c.add_argument("--image-size", type=int, default=None, help="resize+centre-crop side (OFA: 256)")
    c.add_argument("--center-crop", type=int, default=None,
                   help="encode only the central CxC of the prepared image (OFA infilling: 128 of 256)")
    c.add_argument("--tokens", action="store_true", help="write <code_i> tokens instead of integers")
    c.add_argument("--stochastic", action="store_true", help="sample Gumbel codes (official behaviour)")
    c.add_argument("--batch-size", type=int, default=16)

    dd = sub.add_parser("decode", help="code TSV -> PNG images")
    _add_model_arg(dd)
    dd.add_argument("--codes", required=True, help="TSV with the codes in the last field (integers or <code_i>)")
    dd.add_argument("--out", required=True, help="output folder")
    dd.add_argument("--grid", default=None, help="HxW code grid (default: square)")

    i = sub.add_parser("info", help="print the model configuration")
    _add_model_arg(i)
    return parser


def _load(args):
    from ofa.vqgan.convert import load_vqgan

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return load_vqgan(args.model, args.config, map_location=args.device)


def _train(args) -> int:
    from ofa.vqgan.train import train

    fields = {k: v for k, v in vars(args).items() if k != "command"}
    summary = train(TrainArgs(**fields))
    print(json.dumps({k: summary["final"][k] for k in summary["final"]}, indent=2))
    return 0


def _eval(args) -> int:
    from ofa.vqgan.data import load_images, to_model_range, to_uint8
    from ofa.vqgan.train import evaluate

    model = _load(args)
    size = args.image_size or model.config.resolution
    images, ids = load_images(args.images, size, args.max_images, args.schema, args.image_column)
    metrics = evaluate(model, images, args.batch_size, stochastic=args.stochastic)
    metrics.update({"image_size": size, "model": args.model})
    if args.save_recon:
        from PIL import Image

        os.makedirs(args.save_recon, exist_ok=True)
        for start in range(0, len(images), args.batch_size):
            x = to_model_range(images[start:start + args.batch_size]).to(args.device)
            rec = to_uint8(model.decode(model.encode(x, stochastic=args.stochastic))).cpu()
            for j in range(len(x)):
                pair = torch.cat([images[start + j], rec[j]], dim=2).permute(1, 2, 0).numpy()
                with atomic_output(os.path.join(args.save_recon, f"{start + j:05d}.png")) as tmp:
                    Image.fromarray(pair).save(tmp, format="PNG")
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        write_atomic(args.json, text + "\n")
    return 0


def _encode(args) -> int:
    from ofa.vqgan.data import iter_images, prepare, to_model_range

    model = _load(args)
    size = args.image_size or model.config.resolution
    crop = args.center_crop
    if crop is not None and not 0 < crop <= size:
        raise ConfigError(f"--center-crop {crop} must be in (0, {size}]")

    def flush(batch, names, out):
        x = to_model_range(torch.stack(batch)).to(args.device)
        codes = model.encode(x, stochastic=args.stochastic).flatten(1).tolist()
        for name, row in zip(names, codes):
            text = " ".join(f"<code_{c}>" for c in row) if args.tokens else " ".join(map(str, row))
            out.write(f"{name}\t{text}\n")

    n, batch, names = 0, [], []
    with AtomicFile(args.out, "w") as out:  # a failed run leaves no half-written codes file
        for name, image in iter_images(args.images, args.schema, args.image_column):
            arr = torch.from_numpy(prepare(image, size))
            if crop is not None:
                o = (size - crop) // 2
                arr = arr[:, o:o + crop, o:o + crop]
            batch.append(arr)
            names.append(name.replace("\t", " "))
            n += 1
            if len(batch) == args.batch_size:
                flush(batch, names, out)
                batch, names = [], []
            if args.max_images is not None and n >= args.max_images:
                break
        if batch:
            flush(batch, names, out)
    side = (crop or size) // model.factor
    print(f"wrote {n} rows of {side}x{side} = {side * side} codes to {args.out}")
    return 0


def _decode(args) -> int:
    from ofa.vqgan.data import to_pil

    model = _load(args)
    grid = tuple(int(v) for v in args.grid.lower().split("x")) if args.grid else None
    os.makedirs(args.out, exist_ok=True)
    n = 0
    with open(args.codes) as f:
        for lineno, line in enumerate(f):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                codes = parse_codes(fields[-1], vocab_size=model.n_embed)
                h, w = code_grid(len(codes), grid)
            except CodeError as e:
                raise CodeError(f"{args.codes} line {lineno + 1}: {e}") from None
            image = model.decode(torch.tensor(codes).view(1, h, w))[0].cpu()
            name = fields[0] if len(fields) > 1 else str(lineno)
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or str(lineno)
            with atomic_output(os.path.join(args.out, f"{safe}.png")) as tmp:
                to_pil(image).save(tmp, format="PNG")
            n += 1
    print(f"wrote {n} images to {args.out}")
    return 0


def _info(args) -> int:
    from ofa.vqgan.convert import describe
    from ofa.vqgan.model import count_parameters

    model = _load(args)
    print(describe(model))
    print(json.dumps({"config": model.config.to_dict(), "factor": model.factor,
                      "parameters": count_parameters(model)}, indent=2))
    return 0


COMMANDS = {"train": _train, "eval": _eval, "encode": _encode, "decode": _decode, "info": _info}


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args) or 0


def main(argv: Optional[List[str]] = None) -> int:
    """Mistakes (bad data, config or checkpoint: ``ofa.errors.UserError``; missing files) in one line
    ``ofa-vqgan: error: ...``, exit status 2 (``ofa.console.run_cli``)."""
    return run_cli("ofa-vqgan", _main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
