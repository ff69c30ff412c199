"""Text-to-image data from the embedded benchmark's scenes, and a scene checker to score generations.

``ofa-synth image-gen OUT_DIR --vqgan VQGAN [--num-images N] [--image-size 64] [--seed 0]`` draws
the benchmark's scenes ``offset .. offset + N - 1`` (the same images as ``ofa-synth generate`` with the same
seed and size; the split of each image is the benchmark's) and writes, per split
(train / valid / test / comp):

- ``image_gen_{split}.tsv`` (``image_gen`` schema: ``uniq_id, code, caption``): the VQGAN codes of the
  ``image_size`` x ``image_size`` scene (row-major, ``(image_size / f) ** 2`` of them) and a caption
  that names the colour and shape of the scene's main (largest) object, one row per caption
  (``--captions-per-image``; ``uniq_id = 10 * image + k``);
- ``image_gen_{split}_images.tsv`` (``image_classify`` schema: ``image, label_index, label_name``):
  the scene and its main object's ``colour shape`` (one row per image), for the checker and for
  reconstruction ceilings;
- ``image_gen_manifest.json``: counts, the VQGAN, the held-out pairs.

Captions use the benchmark's "biggest object" wording ("three objects and the biggest one is a red
circle", "a large red circle with two smaller shapes around it", "a red circle on a striped
background"), so each names exactly one colour and one shape: the main object's. Train scenes never
show a held-out (colour, shape) pair; ``comp`` scenes' main objects are held-out pairs.

``SceneChecker`` is a small CNN that predicts the main object's colour and shape from an image
(``[B, 3, S, S]`` in [-1, 1]); ``train_checker`` fits it on real scenes, ``load_checker`` reads it
back, and ``check_generated`` / ``checker_scores`` judge the PNGs that ``ofa-evaluate --gen-images-path``
writes against the colour and shape their captions name.
"""
import argparse
import json
import os
import random
import re
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ofa.data_utils.formats import get_schema
from ofa.data_utils.images import decode_b64
from ofa.io_utils import write_atomic

CHECKER_FORMAT = "ofa-scene-checker"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
BACKGROUND_WORDS = {"plain": "plain", "gradient": "shaded", "stripes": "striped", "noise": "noisy"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def main_object_captions(scene: Dict, rng: random.Random, k: int = 1) -> List[str]:
    """``k`` different captions naming the main object's colour and shape (scene: ``records`` JSON)."""
    objs = scene["objects"]
    main = objs[scene["main"]]
    n = len(objs)
    what = f"{main['color']} {main['shape']}"
    bg = BACKGROUND_WORDS.get(scene.get("background", ""), "plain")
    cands = [f"{_article(main['color'])} {what} on a {bg} background"]
    if n >= 2:
        cands += [f"{NUMBER_WORDS[n]} objects and the biggest one is {_article(main['color'])} {what}",
                  f"a large {what} with {NUMBER_WORDS[n - 1]} smaller {'shape' if n == 2 else 'shapes'} around it"]
    rng.shuffle(cands)
    return cands[:max(1, k)]


# ------------------------------------------------------------------------------------------ checker
class SceneChecker(nn.Module):
    """images ``[B, 3, S, S]`` in [-1, 1] -> (colour logits ``[B, C]``, shape logits ``[B, K]``) of the main object."""

    def __init__(self, colors: Sequence[str], shapes: Sequence[str], image_size: int = 64, width: int = 32):
        super().__init__()
        self.colors, self.shapes, self.image_size, self.width = list(colors), list(shapes), image_size, width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        w = width
        self.features = nn.Sequential(block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 4 * w), nn.MaxPool2d(2), block(4 * w, 4 * w))
        self.color_head = nn.Linear(8 * w, len(self.colors))
        self.shape_head = nn.Linear(8 * w, len(self.shapes))

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        h = self.features(images)  # [B, 4w, S/8, S/8]
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)  # [B, 8w]
        return self.color_head(h), self.shape_head(h)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """images ``[B, 3, H, W]`` in [-1, 1] -> (colour index ``[B]``, shape index ``[B]``)."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        c, s = self(images.to(dev).float())
        self.train(was)
        return c.argmax(-1).cpu(), s.argmax(-1).cpu()

    def parse_caption(self, caption: str) -> Tuple[Optional[str], Optional[str]]:
        """The first colour word and the first shape word (singular or plural) the caption names."""
        color = shape = None
        for word in re.findall(r"[a-z]+", caption.lower()):
            if color is None and word in self.colors:
                color = word
            if shape is None and (word in self.shapes or (word.endswith("s") and word[:-1] in self.shapes)):
                shape = word if word in self.shapes else word[:-1]
        return color, shape


def save_checker(model: SceneChecker, path: str, metrics: Optional[Dict] = None) -> None:
    from ofa.io_utils import atomic_output

    obj = {"format": CHECKER_FORMAT, "colors": model.colors, "shapes": model.shapes, "image_size": model.image_size,
           "width": model.width, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "metrics": metrics or {}}
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def load_checker(path: str) -> SceneChecker:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKER_FORMAT:
        raise ValueError(f"{path} is not a scene checker written by save_checker")
    model = SceneChecker(obj["colors"], obj["shapes"], obj["image_size"], obj["width"])
    model.load_state_dict(obj["state_dict"])
    return model.eval()


def load_labelled_images(path: str, image_size: int, colors: Sequence[str], shapes: Sequence[str]):
    """``image_classify`` TSV -> (uint8 ``[N, 3, S, S]``, colour index ``[N]``, shape index ``[N]``)."""
    from ofa.data_utils.readers import open_reader
    from ofa.vqgan.data import prepare

    reader = open_reader(path, schema="image_classify", columns=["image", "label_name"])
    images, cs, ss = [], [], []
    for i in range(len(reader)):
        b64, label = reader[i]
        color, shape = label.split(" ", 1)
        images.append(torch.from_numpy(prepare(decode_b64(b64), image_size)))
        cs.append(list(colors).index(color))
        ss.append(list(shapes).index(shape))
    return torch.stack(images), torch.tensor(cs), torch.tensor(ss)


def checker_accuracy(model: SceneChecker, images: torch.Tensor, colors: torch.Tensor, shapes: torch.Tensor,
                     batch_size: int = 128) -> Dict[str, float]:
    """images ``[N, 3, S, S]`` in [-1, 1] (float) or uint8 -> colour / shape / both accuracy."""
    from ofa.vqgan.data import to_model_range

    pc, ps = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = to_model_range(x) if x.dtype == torch.uint8 else x
        c, s = model.predict(x)
        pc.append(c)
        ps.append(s)
    pc, ps = torch.cat(pc), torch.cat(ps)
    c_ok, s_ok = pc.eq(colors), ps.eq(shapes)
    return {"color": c_ok.float().mean().item(), "shape": s_ok.float().mean().item(),
            "both": (c_ok & s_ok).float().mean().item(), "n": int(len(images))}


def check_generated(checker: SceneChecker, records: Sequence[Dict]) -> List[Dict]:
    """The checker's verdict on the images ``ofa-evaluate --gen-images-path`` wrote.

    Args:
        checker: a trained ``SceneChecker``.
        records: ``image_gen`` records of ``{split}_predict.json`` (``uniq_id``, ``caption``, ``image``: the
            best sample's PNG); records without an image are skipped.

    Returns:
        per checked record ``{"uniq_id", "checker": (colour, shape) seen in the image, "label": (colour,
        shape) the caption names (``None`` where it names none)}``.
    """
    from PIL import Image

    from ofa.vqgan.data import prepare, to_model_range

    out = []
    for rec in records:
        if not rec.get("image"):
            continue
        with Image.open(rec["image"]) as img:
            pixels = torch.from_numpy(prepare(img, checker.image_size))[None]
        color, shape = checker.predict(to_model_range(pixels))
        out.append({"uniq_id": rec["uniq_id"], "checker": (checker.colors[int(color[0])], checker.shapes[int(shape[0])]),
                    "label": checker.parse_caption(rec["caption"])})
    return out


def checker_scores(checked: Sequence[Dict]) -> Dict[str, float]:
    """``checker_{color,shape,both}_acc`` over the ``check_generated`` rows whose caption names a colour and a
    shape (an empty dict when none does)."""
    rows = [c for c in checked if None not in c["label"]]
    if not rows:
        return {}
    color = [c["checker"][0] == c["label"][0] for c in rows]
    shape = [c["checker"][1] == c["label"][1] for c in rows]
    n = len(rows)
    return {"checker_color_acc": sum(color) / n, "checker_shape_acc": sum(shape) / n,
            "checker_both_acc": sum(a and b for a, b in zip(color, shape)) / n}


def train_checker(images: torch.Tensor, colors: torch.Tensor, shapes: torch.Tensor, color_names: Sequence[str],
                  shape_names: Sequence[str], steps: int = 600, batch_size: int = 64, lr: float = 2e-3,
                  width: int = 32, seed: int = 0, log: Callable[[str], None] = print) -> SceneChecker:
    """Fit a ``SceneChecker`` on uint8 images ``[N, 3, S, S]`` with colour / shape indices ``[N]``
    (Adam, cosine decay, horizontal flips)."""
    from ofa.vqgan.data import to_model_range

    torch.manual_seed(seed)
    model = SceneChecker(color_names, shape_names, images.shape[-1], width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(steps):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
        x = to_model_range(images[idx])
        flip = torch.rand(len(x), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        c, s = model(x)
        loss = F.cross_entropy(c, colors[idx]) + F.cross_entropy(s, shapes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"checker step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    return model.eval()


# ------------------------------------------------------------------------------------------ data CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-synth image-gen", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--vqgan", required=True, help="folder (or file) of the VQGAN that makes the codes")
    p.add_argument("--num-images", type=int, default=1000, help="scenes to draw (all splits)")
    p.add_argument("--image-size", type=int, default=64, help="scene side = code image size")
    p.add_argument("--seed", type=int, default=0, help="the benchmark's seed")
    p.add_argument("--held-out", type=int, default=4, help="the benchmark's number of held-out pairs")
    p.add_argument("--offset", type=int, default=0, help="index of the first scene (0: the benchmark's images)")
    p.add_argument("--captions-per-image", type=int, default=1, help="rows per scene (different captions)")
    p.add_argument("--batch-size", type=int, default=64, help="VQGAN encoding batch")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from ofa.vqgan import open_vqgan
    from ofa.vqgan.data import prepare, to_model_range
    from ofa_synth.records import SynthConfig, make_record
    from ofa_synth.splits import SPLITS, choose_held_out
    from ofa_synth.writer import Sink

    args = build_parser().parse_args(argv)
    if args.num_images < 1 or args.image_size < 16:
        build_parser().error("need --num-images >= 1 and --image-size >= 16")
    vq = open_vqgan(args.vqgan)
    if args.image_size % vq.factor:
        raise ValueError(f"--image-size {args.image_size} is not a multiple of the VQGAN factor {vq.factor}")
    os.makedirs(args.out_dir, exist_ok=True)
    held = tuple(choose_held_out(args.seed, args.held_out))
    cfg = SynthConfig(seed=args.seed, num_images=args.offset + args.num_images, image_size=args.image_size,
                      held_out=held)
    gen_cols, img_cols = get_schema("image_gen").columns, get_schema("image_classify").columns
    sinks = {s: (Sink(os.path.join(args.out_dir, f"image_gen_{s}.tsv"), gen_cols),
                 Sink(os.path.join(args.out_dir, f"image_gen_{s}_images.tsv"), img_cols)) for s in SPLITS}
    pending: List[Tuple[str, int, Dict, List[str], torch.Tensor]] = []
    t0 = time.time()

    def flush():
        if not pending:
            return
        x = to_model_range(torch.stack([p[4] for p in pending]))
        codes = vq.encode(x).flatten(1).tolist()  # [B, (S/f)^2]
        for (split, i, row, caps, _), c in zip(pending, codes):
            gen, imgs = sinks[split]
            code = " ".join(map(str, c))
            for k, cap in enumerate(caps):
                gen.write_row({"uniq_id": 10 * i + k, "code": code, "caption": cap})
            imgs.write_row(row)
        pending.clear()

    try:
        with torch.no_grad():
            for i in range(args.offset, args.offset + args.num_images):
                rec = make_record(i, cfg)
                row = rec.rows["image_classify"][0]
                caps = main_object_captions(rec.scene, random.Random(f"{args.seed}|{i}|caption"),
                                            args.captions_per_image)
                pixels = torch.from_numpy(prepare(decode_b64(row["image"]), args.image_size))
                pending.append((rec.split, i, row, caps, pixels))
                if len(pending) >= args.batch_size:
                    flush()
            flush()
        for pair in sinks.values():
            for s in pair:
                s.commit()
    except BaseException:
        for pair in sinks.values():
            for s in pair:
                if not s.closed:
                    s.abort()
        raise
    manifest = {"generator": "ofa_synth.image_gen", "seed": args.seed, "offset": args.offset,
                "num_images": args.num_images, "image_size": args.image_size, "vqgan": os.path.abspath(args.vqgan),
                "vqgan_factor": vq.factor, "vqgan_codes": vq.n_embed, "codes_per_image": (args.image_size // vq.factor) ** 2,
                "held_out_combos": [list(c) for c in held],
                "rows": {s: sinks[s][0].rows for s in SPLITS}, "images": {s: sinks[s][1].rows for s in SPLITS}}
    write_atomic(os.path.join(args.out_dir, "image_gen_manifest.json"), json.dumps(manifest, indent=1))
    if not args.quiet:
        print(f"wrote image_gen rows to {args.out_dir} in {time.time() - t0:.0f}s: "
              + ", ".join(f"{s} {n}" for s, n in manifest["rows"].items())
              + f" ({manifest['codes_per_image']} codes each)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
