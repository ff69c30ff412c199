"""Loader throughput: TSV vs HDF5, sequential vs random access, next to a tiny model's training step.

Prints numbers; it is not a test. From the repository root:

    .venv/bin/python bench/bench_data.py [--num-images 400] [--image-size 128] [--task caption]

It writes an embedded benchmark into a temporary folder (or uses ``--data DIR``), converts the task's
training TSV to HDF5, then times, for each format and access order, building samples (decode +
resize + tokenise) with one worker, and the raw row reads alone. The last line times one
forward+backward step of ``ofa_test`` on a batch of the same images, so it is plain whether one
loader worker keeps up with training.
"""
import argparse
import os
import random
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from ofa.data_utils.datasets import DATASETS, DataConfig
from ofa.data_utils.hdf5 import tsv_to_hdf5
from ofa.data_utils.readers import open_reader
from ofa.model import OFAModel, config_for_arch
from ofa.tokenizer import load_tokenizer, train_sentencepiece

FILE = {"caption": "caption", "refcoco": "refcoco", "vqa": "vqa", "snli_ve": "snli_ve",
        "image_classify": "image_classify"}


def timed(fn, n):
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="an existing `ofa-data synth` folder")
    p.add_argument("--num-images", type=int, default=400)
    p.add_argument("--image-size", type=int, default=128, help="synthetic image size")
    p.add_argument("--patch-image-size", type=int, default=128, help="model input size")
    p.add_argument("--task", default="caption", choices=sorted(FILE))
    p.add_argument("--samples", type=int, default=300)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="ofa-bench-")
    data = args.data
    if data is None:
        from ofa_synth.writer import main as synth_main

        data = os.path.join(work, "synth")
        synth_main([data, "--num-images", str(args.num_images), "--image-size", str(args.image_size), "--seed", "0"])
    tok_dir = os.path.join(data, "tok")
    if not os.path.isdir(tok_dir):
        train_sentencepiece(os.path.join(data, "text_corpus.txt"), tok_dir, vocab_size=600)
    tok = load_tokenizer(tok_dir)
    tsv = os.path.join(data, f"{FILE[args.task]}_train.tsv")
    h5 = os.path.join(work, "train.h5")
    t0 = time.perf_counter()
    rows = tsv_to_hdf5(tsv, h5, FILE[args.task])
    print(f"converted {rows} rows TSV -> HDF5 in {time.perf_counter() - t0:.2f} s "
          f"({os.path.getsize(tsv) / 2**20:.1f} MiB -> {os.path.getsize(h5) / 2**20:.1f} MiB)")
    cls = DATASETS[args.task]
    cfg = DataConfig(patch_image_size=args.patch_image_size)
    n = min(args.samples, rows)
    print(f"{'format':<6} {'access':<10} {'rows/s (read only)':>19} {'samples/s (1 worker)':>21}")
    for name, path in (("tsv", tsv), ("hdf5", h5)):
        reader = open_reader(path, schema=FILE[args.task], columns=cls.columns)
        ds = cls(reader, tok, cfg, "train")
        order = list(range(len(reader)))
        for access in ("sequential", "random"):
            idx = order[:n] if access == "sequential" else random.Random(0).sample(order, n)
            read = timed(lambda i: reader.read_row(idx[i]), n)
            build = timed(lambda i: ds[idx[i]], n)
            print(f"{name:<6} {access:<10} {read:>19.0f} {build:>21.1f}")
    model = OFAModel.from_config(config_for_arch("ofa_test"), tok.dictionary).train()
    batch = ds.collater([ds[i] for i in range(16)])
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step(_):
        logits = model(**batch["net_input"])[0]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["target"].reshape(-1), ignore_index=1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    rate = timed(step, 3) * 16
    print(f"ofa_test training step, batch 16 at {args.patch_image_size}px: {rate:.1f} samples/s "
          f"(torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    sys.exit(main())
