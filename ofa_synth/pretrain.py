"""Pretraining sources from the embedded benchmark's scenes (``ofa-synth pretrain OUT_DIR``).

Writes, into ``OUT_DIR``, the four official pretraining files (schemas in ``formats.py``) plus the
negative-sample folder of ``unify`` (docs/tasks.md 3):

- ``pretrain_vl.tsv``: ``caption`` rows (one per caption), ``qa`` rows (question; ``refs`` = the
  ``conf|!+answer`` annotator answers) and ``visual_grounding`` rows (``caption`` = the referring
  expression; ``refs`` = ``x0,y0,x1,y1``), ``gt_objects`` = the ``colour shape`` of every object,
  ``dataset_name`` = ``synth``. Besides the benchmark's kinds of question, ``--verify-per-scene N``
  (default 0) GQA-style verification questions per scene (``dataset_name`` = ``synth_gqa``; "is there a red
  circle?", "is the red circle large?", "is the red circle to the left of the blue square?", "are there
  three shapes?"; yes and no in turn, ``language.verify_questions``), as the official mixture holds GQA
  beside VQA v2.
- ``pretrain_text.tsv``: the text corpus of these scenes plus the general facts.
- ``pretrain_detection.tsv``: every visible object as ``x0,y0,x1,y1,cat_id,cat_name`` joined by
  ``&&`` (category ``colour shape``, id 1-based in ``class_names()``).
- ``pretrain_image.tsv`` (only with ``--vqgan``): 256 x 256 scenes and the 256 VQGAN codes (16 x 16,
  space-separated) of their central 128 x 128 crop. Without ``--vqgan`` (or with a VQGAN whose
  factor does not give 256 codes) the file is **not written**: codes are never invented.
- ``type2ans.json``, ``object.txt``, ``all_captions.txt``: the negative pools (``--neg-sample-dir``).

Fairness with finetuning on the benchmark: the scenes are images ``offset .. offset + N - 1`` of the
same generator and seed (``--offset`` defaults to 1,000,000, so they are new images, disjoint from the
benchmark's 0 .. num_images - 1), and only images that fall in the *train* split are kept. Train
images never show or name a held-out (colour, shape) pair, and the held-out pairs are those of the
benchmark with the same ``--seed`` / ``--held-out``, so the compositional test stays unseen.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Dict, List, Optional

from ofa.data_utils.formats import format_answers, get_schema
from ofa.data_utils.images import decode_b64, encode_image
from ofa.io_utils import write_atomic
from ofa_synth.language import corpus_facts, human_answers, pick_balanced, verify_questions
from ofa_synth.records import SynthConfig, detection_boxes, make_record
from ofa_synth.scenes import Scene
from ofa_synth.splits import allowed_combos, choose_held_out, keep
from ofa_synth.vocab import answer_vocabulary, class_names
from ofa_synth.writer import Sink

DEFAULT_OFFSET = 1_000_000


def _answer_type(answer: str) -> str:
    from ofa_synth.vocab import COLOR_NAMES, COLOR_SYNONYMS, NUMBER_WORDS, SHAPE_SYNONYMS, SHAPES
    if answer in ("yes", "no"):
        return "yes/no"
    if answer.isdigit() or answer in NUMBER_WORDS:
        return "how many"
    if answer in COLOR_NAMES or answer in COLOR_SYNONYMS.values():
        return "color"
    if answer in SHAPES or answer in SHAPE_SYNONYMS.values():
        return "shape"
    return "other"


def type2ans() -> Dict[str, List[str]]:
    """Answer types of the closed answer vocabulary ("how many" digits get the official +-1 rule)."""
    out: Dict[str, List[str]] = {}
    for a in answer_vocabulary():
        out.setdefault(_answer_type(a), []).append(a)
    out.setdefault("other", [])
    if len(out["other"]) < 2:  # the official fallback draws from 'other'
        out["other"] = out["other"] + [a for a in answer_vocabulary() if a not in out["other"]]
    # 'other' first so that the specific types win in the answer -> type map
    return {"other": out.pop("other"), **out}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-synth pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--num-images", type=int, default=200, help="scenes to draw (non-train ones are skipped)")
    p.add_argument("--num-code-images", type=int, default=None,
                   help="256 px scenes for pretrain_image.tsv (default: --num-images)")
    p.add_argument("--seed", type=int, default=0, help="the benchmark's seed (fixes the held-out pairs)")
    p.add_argument("--held-out", type=int, default=4, help="the benchmark's number of held-out pairs")
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--comp-frac", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=128, help="side of the V-L and detection images")
    p.add_argument("--offset", type=int, default=DEFAULT_OFFSET, help="index of the first scene")
    p.add_argument("--vqgan", default=None, help="folder (or file) of a VQGAN checkpoint for the image codes")
    p.add_argument("--code-image-size", type=int, default=128, help="centre side c; images are 2c x 2c")
    p.add_argument("--verify-per-scene", type=int, default=0,
                   help="GQA-style yes / no verification questions per scene (qa rows, dataset_name synth_gqa; 0: none)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1 or args.image_size < 32:
        build_parser().error("need --num-images >= 1 and --image-size >= 32")
    os.makedirs(args.out_dir, exist_ok=True)
    held = tuple(choose_held_out(args.seed, args.held_out))
    cfg = SynthConfig(seed=args.seed, num_images=args.offset + args.num_images, image_size=args.image_size,
                      valid_frac=args.valid_frac, test_frac=args.test_frac, comp_frac=args.comp_frac,
                      held_out=held)
    out = lambda name: os.path.join(args.out_dir, name)  # noqa: E731
    vl = Sink(out("pretrain_vl.tsv"), get_schema("pretrain_vl").columns)
    text = Sink(out("pretrain_text.tsv"), get_schema("pretrain_text").columns)
    det = Sink(out("pretrain_detection.tsv"), get_schema("pretrain_detection").columns)
    sinks = [vl, text, det]
    captions, n_scenes, counts = [], 0, {"caption": 0, "qa": 0, "visual_grounding": 0}
    n_verify = 0
    try:
        for line in corpus_facts():
            text.write_row({"uniq_id": text.rows, "text": line})
        for i in range(args.offset, args.offset + args.num_images):
            rec = make_record(i, cfg)
            if rec.split != "train":
                continue
            n_scenes += 1
            image = rec.rows["image_classify"][0]["image"]
            objects = "&&".join(f"{o['color']} {o['shape']}" for o in rec.scene["objects"])
            base = dict(image=image, gt_objects=objects, dataset_name="synth", caption="", question="", refs="")
            for r in rec.rows["caption"]:
                vl.write_row({**base, "uniq_id": f"cap{r['uniq_id']}", "caption": r["caption"], "type": "caption"})
                captions.append(r["caption"])
                counts["caption"] += 1
            for r in rec.rows["vqa"]:
                vl.write_row({**base, "uniq_id": f"qa{r['question_id']}", "question": r["question"],
                              "refs": r["answers"], "type": "qa"})
                counts["qa"] += 1
            for k, q in enumerate(_verify(rec, i, held, args)):
                answers = format_answers(human_answers(q.answer, q.answer_kind, random.Random(f"{args.seed}/{i}/{k}")))
                vl.write_row({**base, "uniq_id": f"vf{10 * i + k}", "question": q.text, "refs": answers, "type": "qa",
                              "dataset_name": "synth_gqa"})
                counts["qa"] += 1
                n_verify += 1
            for r in rec.rows["refcoco"]:
                vl.write_row({**base, "uniq_id": f"vg{r['uniq_id']}", "caption": r["text"], "refs": r["region_coord"],
                              "type": "visual_grounding"})
                counts["visual_grounding"] += 1
            for line in rec.corpus:
                text.write_row({"uniq_id": text.rows, "text": line})
            boxes = detection_boxes(rec.scene["objects"])
            if boxes:
                det.write_row({"uniq_id": i, "image": image, "boxes": boxes})
        for s in sinks:
            s.commit()
    except BaseException:
        for s in sinks:
            if not s.closed:
                s.abort()
        raise

    image_rows, image_note = 0, None
    if args.vqgan:
        image_rows, image_note = _write_codes(args, held, out("pretrain_image.tsv"))
    else:
        image_note = "no --vqgan given: pretrain_image.tsv not written (image codes are never invented)"

    write_atomic(out("type2ans.json"), json.dumps(type2ans(), indent=1))
    write_atomic(out("object.txt"), "".join(n + "\n" for n in class_names()))
    write_atomic(out("all_captions.txt"), "".join(c + "\n" for c in dict.fromkeys(captions)))
    manifest = {
        "generator": "ofa_synth.pretrain", "seed": args.seed, "offset": args.offset,
        "scenes_drawn": args.num_images, "train_scenes_kept": n_scenes, "held_out_combos": [list(c) for c in held],
        "files": {"pretrain_vl.tsv": vl.rows, "pretrain_text.tsv": text.rows, "pretrain_detection.tsv": det.rows,
                  "pretrain_image.tsv": image_rows},
        "vl_rows_by_type": counts, "verify_questions": n_verify, "image_note": image_note,
        "policy": "only train-split scenes (no held-out colour-shape pair is shown or named)",
    }
    write_atomic(out("pretrain_manifest.json"), json.dumps(manifest, indent=1))
    if not args.quiet:
        print(f"wrote pretraining sources for {n_scenes} scenes to {args.out_dir}: " +
              ", ".join(f"{k} {v}" for k, v in manifest["files"].items()))
        if image_note:
            print(image_note)
    return 0


def _verify(rec, i: int, held, args):
    """The scene's verification questions (its own random stream: the benchmark's rows stay as they are)."""
    if args.verify_per_scene <= 0:
        return []
    scene = Scene.from_json(rec.scene)
    rng = random.Random(f"verify/{args.seed}/{i}")
    present = {o.combo for o in scene.objects}
    absent = rng.sample([c for c in allowed_combos(rec.split, held) if c not in present], 3)
    held_set = frozenset(held)
    groups = {g: [q for q in qs if keep(q, rec.split, held_set, scene)]
              for g, qs in verify_questions(scene, rng, absent).items()}
    return pick_balanced(groups, rng, args.verify_per_scene)


def _write_codes(args, held, path):
    """256 px scenes and the VQGAN codes of their central crop -> pretrain_image.tsv."""
    import torch

    from ofa.vqgan import open_vqgan
    from ofa.vqgan.data import prepare, to_model_range

    model = open_vqgan(args.vqgan)
    c = args.code_image_size
    factor = model.config.factor
    if c % factor:
        return 0, f"--code-image-size {c} is not a multiple of the VQGAN factor {factor}: pretrain_image.tsv not written"
    cfg = SynthConfig(seed=args.seed, num_images=args.offset + 10 ** 7, image_size=2 * c,
                      valid_frac=args.valid_frac, test_frac=args.test_frac, comp_frac=args.comp_frac,
                      held_out=held)
    sink = Sink(path, get_schema("pretrain_image").columns)
    n = args.num_code_images or args.num_images
    try:
        start = args.offset + 5 * 10 ** 6  # other scenes than the V-L ones
        for i in range(start, start + n):
            rec = make_record(i, cfg)
            if rec.split != "train":
                continue
            b64 = rec.rows["image_classify"][0]["image"]
            img = decode_b64(b64)
            centre = img.crop((c // 2, c // 2, c // 2 + c, c // 2 + c))
            x = to_model_range(torch.from_numpy(prepare(centre, c))[None])
            codes = model.encode(x)[0].flatten().tolist()
            sink.write_row({"uniq_id": i, "image": encode_image(img), "code": " ".join(map(str, codes))})
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return sink.rows, None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
