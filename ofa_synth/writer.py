"""Stream the benchmark to disk: images are made one at a time (optionally in worker processes, results
kept in image order) and their rows go straight to every open file, so memory does not grow with the
number of images.

All TSV files follow the official column orders (``formats.get_schema(name).columns``). Each file is
written to a temporary name and renamed when complete, like ``tsv_writer.write_tsv`` (which takes one
file's rows at a time; here one image feeds every file at once, so the files are kept open side by side).

``ofa-synth generate OUT_DIR`` (``main``) is the command line of ``generate``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import sys
import time
from typing import Dict, Iterator, List, Optional

from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.io_utils import AtomicFile, write_atomic
from ofa_synth.language import corpus_facts
from ofa_synth.records import TASKS, ImageRecord, SynthConfig, make_record
from ofa_synth.scenes import LARGE_EXTENT, MIN_VISIBLE, SMALL_EXTENT
from ofa_synth.splits import SPLITS, check_fractions, choose_held_out
from ofa_synth.version import GENERATOR_VERSION
from ofa_synth.vocab import COLOR_NAMES, SHAPES, SIZES, answer_vocabulary, class_names

BOX_CONVENTION = ("x0,y0,x1,y1 in pixels of the image, origin at the top-left corner; tight box of the "
                  "object's visible pixels, which fill columns x0..x1-1 and rows y0..y1-1")


class Sink:
    """A text file written line by line under a temporary name and renamed into place by ``commit``
    (``ofa.io_utils.AtomicFile``); ``rows`` counts the lines written."""

    def __init__(self, path: str, columns: Optional[tuple] = None):
        self.path, self.columns, self.rows = path, columns, 0
        self.f = AtomicFile(path, "w", encoding="utf-8", newline="\n")

    @property
    def closed(self) -> bool:
        return self.f.closed

    def write_row(self, row: Dict) -> None:
        values = [str(row[c]) for c in self.columns]
        for v, c in zip(values, self.columns):
            if "\t" in v or "\n" in v or "\r" in v:
                raise DataError("field contains a tab or newline", self.path, self.rows, c)
        self.f.write("\t".join(values) + "\n")
        self.rows += 1

    def write_line(self, line: str) -> None:
        if "\n" in line or "\r" in line:
            raise DataError("line contains a newline", self.path, self.rows)
        self.f.write(line + "\n")
        self.rows += 1

    def commit(self) -> None:
        self.f.commit()

    def abort(self) -> None:
        self.f.abort()


_WORKER_CFG: Optional[SynthConfig] = None


def _init_worker(cfg: SynthConfig) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg


def _work(i: int) -> ImageRecord:
    return make_record(i, _WORKER_CFG)


def iter_records(cfg: SynthConfig, workers: int = 1, block: int = 4096) -> Iterator[ImageRecord]:
    """Records of images ``0 .. num_images-1`` in order; with ``workers > 1`` they are made in a
    process pool, ``block`` images at a time (bounding the results waiting in memory)."""
    if workers <= 1:
        for i in range(cfg.num_images):
            yield make_record(i, cfg)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        for start in range(0, cfg.num_images, block):
            yield from pool.imap(_work, range(start, min(cfg.num_images, start + block)), chunksize=8)


def _write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def generate(out_dir: str, cfg: SynthConfig, num_held_out: int = 4, workers: int = 1,
             progress=None) -> Dict:
    """Write the whole benchmark into ``out_dir`` and return the manifest (also ``manifest.json``).

    Every file except ``manifest.json`` (which records the timing) is byte-identical for the same
    arguments, whatever the number of workers.
    """
    if cfg.num_images < 1 or cfg.image_size < 32:
        raise ValueError("need at least one image and an image size of at least 32 pixels")
    check_fractions(cfg.valid_frac, cfg.test_frac, cfg.comp_frac)
    held = choose_held_out(cfg.seed, num_held_out)
    cfg = SynthConfig(**{**cfg.__dict__, "held_out": tuple(held)})
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()

    sinks: Dict[str, Sink] = {}
    try:
        for task in TASKS:
            for split in SPLITS:
                sinks[f"{task}_{split}.tsv"] = Sink(os.path.join(out_dir, f"{task}_{split}.tsv"),
                                                     get_schema(task).columns)
        for split in SPLITS:
            sinks[f"scenes_{split}.jsonl"] = Sink(os.path.join(out_dir, f"scenes_{split}.jsonl"))
        corpus = sinks["text_corpus.txt"] = Sink(os.path.join(out_dir, "text_corpus.txt"))
        for line in corpus_facts():
            corpus.write_line(line)
        images = {s: 0 for s in SPLITS}
        for n, rec in enumerate(iter_records(cfg, workers), 1):
            images[rec.split] += 1
            for task, rows in rec.rows.items():
                sink = sinks[f"{task}_{rec.split}.tsv"]
                for row in rows:
                    sink.write_row(row)
            sinks[f"scenes_{rec.split}.jsonl"].write_line(json.dumps(rec.scene, separators=(",", ":")))
            for line in rec.corpus:
                corpus.write_line(line)
            if progress and n % 1000 == 0:
                progress(n, time.perf_counter() - t0)
        for sink in sinks.values():
            sink.commit()
    except BaseException:
        for sink in sinks.values():
            if not sink.closed:
                sink.abort()
        raise

    answers = answer_vocabulary()
    ans2label = {a: k for k, a in enumerate(answers)}
    _write_json(os.path.join(out_dir, "vqa_ans2label.json"), ans2label)
    write_atomic(os.path.join(out_dir, "trainval_ans2label.pkl"), pickle.dumps(ans2label, protocol=4))
    names = class_names()
    write_atomic(os.path.join(out_dir, "class_names.txt"), "".join(n + "\n" for n in names))
    seconds = time.perf_counter() - t0

    files = {name: sink.rows for name, sink in sorted(sinks.items())}
    files.update({"vqa_ans2label.json": len(answers), "trainval_ans2label.pkl": len(answers),
                  "class_names.txt": len(names)})
    manifest = {
        "generator": "ofa_synth", "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed, "num_images": cfg.num_images, "images_per_split": images,
        "image_size": [cfg.image_size, cfg.image_size], "image_format": "PNG (base64)",
        "valid_frac": cfg.valid_frac, "test_frac": cfg.test_frac, "comp_frac": cfg.comp_frac,
        "held_out_combos": [list(c) for c in held],
        "split_policy": ("train, valid and test are drawn alike (test: held-out images, in-distribution) and never "
                         "show or name a held-out (colour, shape) pair; comp is compositional: each comp image's main "
                         "object is a held-out pair and every comp caption, referring expression, question and "
                         "hypothesis is about one"),
        "colors": list(COLOR_NAMES), "shapes": list(SHAPES), "sizes": list(SIZES),
        "size_extent_fraction": {"small": list(SMALL_EXTENT), "large": list(LARGE_EXTENT)},
        "min_visible_fraction": MIN_VISIBLE,
        "box_convention": BOX_CONVENTION,
        "ids": "image_id = image index i; uniq_id / question_id = 10 * i + k for the k-th row of image i",
        "classification": "label = colour and shape of the largest visible object; label_index is 1-based in "
                          "class_names.txt",
        "files": files,
        "workers": workers,
        "generation_seconds": round(seconds, 3),
        "images_per_second": round(cfg.num_images / max(seconds, 1e-9), 1),
    }
    _write_json(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest


# ------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofa-synth generate",
        description="Generate a synthetic multi-task benchmark (captioning, grounding, VQA, visual entailment, "
                    "image classification, detection, grounded captioning, text corpus) in the official OFA TSV "
                    "formats: train, valid, an "
                    "i.i.d. test split and a compositional split (comp).")
    p.add_argument("out_dir", help="folder to write (created if missing; files in it are replaced)")
    p.add_argument("--num-images", type=int, default=1000, help="number of images over all splits (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--valid-frac", type=float, default=0.1, help="fraction of images in valid (default 0.1)")
    p.add_argument("--test-frac", type=float, default=0.1, help="fraction of images in test (default 0.1)")
    p.add_argument("--comp-frac", type=float, default=0.1,
                   help="fraction of images in the compositional split comp (default 0.1)")
    p.add_argument("--held-out", type=int, default=4,
                   help="number of (colour, shape) pairs kept out of train/valid (1-4, default 4)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1); output is identical")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1 or args.image_size < 32 or not 1 <= args.held_out <= 4 or args.workers < 1:
        build_parser().error("need --num-images >= 1, --image-size >= 32, --held-out in 1..4, --workers >= 1")
    try:
        check_fractions(args.valid_frac, args.test_frac, args.comp_frac)
    except ValueError as e:
        build_parser().error(f"--valid-frac/--test-frac/--comp-frac: {e}")
    cfg = SynthConfig(seed=args.seed, num_images=args.num_images, image_size=args.image_size,
                      valid_frac=args.valid_frac, test_frac=args.test_frac, comp_frac=args.comp_frac)

    def progress(n, seconds):
        print(f"  {n}/{args.num_images} images, {n / seconds:.1f} images/s", file=sys.stderr, flush=True)

    m = generate(args.out_dir, cfg, num_held_out=args.held_out, workers=args.workers,
                 progress=None if args.quiet else progress)
    if not args.quiet:
        split = ", ".join(f"{k} {v}" for k, v in m["images_per_split"].items())
        print(f"wrote {m['num_images']} images ({split}) to {args.out_dir} in {m['generation_seconds']:.2f} s "
              f"({m['images_per_second']:.1f} images/s, {args.workers} worker(s))")
        print("held-out (colour, shape) pairs: " + ", ".join(" ".join(c) for c in m["held_out_combos"]))
        for name, rows in m["files"].items():
            print(f"  {name:28s} {rows:>9d}")
    return 0
