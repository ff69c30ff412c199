"""Do generated images show what the caption says? A measured check of ``image_gen`` on the embedded data.

    .venv/bin/python -m experiments.image_gen_check [--out runs/image_gen_check] [--quick] [--vqgan DIR] ...

Stages (each one's outputs are kept in ``--out``; every number comes from held-out data):

1. scenes: the embedded benchmark's images (``image_size`` px, seed 0) and the colour and shape of each
   one's main (largest) object, per split (``scenes_{split}.tsv``, ``image_classify`` layout);
2. VQGAN (``ofa-vqgan train``, factor 8, ``--vqgan-codes`` codes) on the train scenes, or ``--vqgan``;
3. checker: a small CNN (``ofa_synth.image_gen.SceneChecker``) trained on the train scenes to
   predict the main object's colour and shape; its accuracy on real test scenes, and on the VQGAN
   reconstructions of the same scenes (the ceiling any generator of these codes can reach);
4. data: ``ofa-synth image-gen`` (codes + captions naming the main object's colour and shape);
5. OFA: ``ofa-train --task image_gen`` of a small model on the CPU (``--ofa-updates``, capped by
   ``--ofa-minutes``);
6. generation: ``ofa-evaluate`` samples images for held-out test captions (``--test-captions``) and
   writes them as PNGs; the checker compares each with its caption's colour and shape
   (``ofa_synth.image_gen.check_generated``). Baselines: chance (1/6, 1/5, 1/30),
   the majority class, and the same generated images scored against shuffled captions (what the
   images would score if they ignored their caption but kept the same class distribution).

Prints a table and writes ``image_gen_check.json``. ``--quick`` is a smoke run of the whole pipeline
with few images and updates (its numbers mean nothing: the VQGAN does not keep colour after 80 steps);
it took 10 minutes on a 2-core CPU shared with other jobs (6 of them the VQGAN). The full preset is
sized for ~20 minutes on 2 uncontended cores but has not been timed; VQGAN steps cost ~1 s each on
one core at ``--vqgan-width 16`` (use ``--vqgan DIR`` to reuse a trained one).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent

FULL = dict(num_images=1500, vqgan_steps=500, checker_steps=400, ofa_updates=1200, ofa_minutes=9.0, test_captions=120)
QUICK = dict(num_images=300, vqgan_steps=80, checker_steps=80, ofa_updates=40, ofa_minutes=1.0, test_captions=24)
MODEL_ARGS = [
    "--arch", "ofa_tiny",
    "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
    "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
    "--encoder-layers", "2", "--decoder-layers", "3",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--resnet-type", "timm:resnet10t", "--add-type-embedding",
]


def log(msg: str) -> None:
    print(f"[image_gen_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, logfile: Path) -> None:
    """Run a tool, its output into ``logfile``; on failure show the log's tail."""
    cmd = [str(c) for c in cmd]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONWARNINGS="ignore")
    with open(logfile, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = logfile.read_text()[-3000:]
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{tail}")


def write_scenes(out: Path, num_images: int, image_size: int, seed: int) -> dict:
    """The benchmark's scenes 0..N-1 as image_classify TSVs per split; returns row counts."""
    from ofa.data_utils.formats import get_schema
    from ofa_synth.records import SynthConfig, make_record
    from ofa_synth.splits import SPLITS, choose_held_out
    from ofa_synth.writer import Sink

    cfg = SynthConfig(seed=seed, num_images=num_images, image_size=image_size,
                      held_out=tuple(choose_held_out(seed, 4)))
    cols = get_schema("image_classify").columns
    sinks = {s: Sink(str(out / f"scenes_{s}.tsv"), cols) for s in SPLITS}
    for i in range(num_images):
        rec = make_record(i, cfg)
        sinks[rec.split].write_row(rec.rows["image_classify"][0])
    for s in sinks.values():
        s.commit()
    return {k: s.rows for k, s in sinks.items()}


def reconstruct(vq, images_u8, batch_size: int = 64):
    """uint8 ``[N, 3, S, S]`` -> VQGAN reconstructions in [-1, 1]."""
    import torch

    from ofa.vqgan.data import to_model_range

    out = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch_size):
            out.append(vq.decode(vq.encode(to_model_range(images_u8[i:i + batch_size]))))
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/image_gen_check")
    p.add_argument("--quick", action="store_true", help="a ~2-3 minute smoke run")
    p.add_argument("--image-size", type=int, default=64, help="scene side = code image size (factor 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--vqgan", default=None, help="use this VQGAN (folder or model.pt) instead of training one")
    p.add_argument("--vqgan-steps", type=int, default=None)
    p.add_argument("--vqgan-codes", type=int, default=256, help="VQGAN codebook size")
    p.add_argument("--vqgan-width", type=int, default=16, help="VQGAN base width (ch; a multiple of 8)")
    p.add_argument("--checker-steps", type=int, default=None)
    p.add_argument("--checker-batch", type=int, default=32)
    p.add_argument("--ofa-updates", type=int, default=None)
    p.add_argument("--ofa-minutes", type=float, default=None, help="wall-clock cap of OFA training")
    p.add_argument("--ofa-batch", type=int, default=32)
    p.add_argument("--ofa-lr", type=float, default=2e-3)
    p.add_argument("--captions-per-image", type=int, default=2)
    p.add_argument("--test-captions", type=int, default=None)
    p.add_argument("--sampling-topk", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings = {}

    import torch

    torch.set_num_threads(args.threads)
    from ofa.vqgan import open_vqgan
    from ofa_synth.image_gen import (
        check_generated,
        checker_accuracy,
        checker_scores,
        load_labelled_images,
        save_checker,
        train_checker,
    )
    from ofa_synth.vocab import COLOR_NAMES, SHAPES

    # 1. scenes
    t = time.time()
    counts = write_scenes(out, args.num_images, args.image_size, args.seed)
    timings["scenes"] = time.time() - t
    log(f"scenes: {counts} ({timings['scenes']:.0f}s)")

    # 2. VQGAN
    t = time.time()
    vq_dir = args.vqgan
    if vq_dir is None:
        vq_dir = str(out / "vqgan")
        run([BIN / "ofa-vqgan", "train", "--images", out / "scenes_train.tsv", "--schema", "image_classify",
             "--valid-images", out / "scenes_test.tsv", "--out", vq_dir, "--image-size", args.image_size,
             "--steps", args.vqgan_steps, "--n-embed", args.vqgan_codes, "--quantizer", "ema",
             "--ch", args.vqgan_width, "--ch-mult", "1,2,2,4", "--z-channels", 32, "--embed-dim", 32,
             "--norm-groups", 8, "--batch-size", 8,
             "--lr", 2e-3, "--threads", args.threads, "--log-every", 100], out / "vqgan_train.log")
    vq = open_vqgan(vq_dir)
    timings["vqgan"] = time.time() - t
    vq_summary = {}
    if os.path.isfile(os.path.join(vq_dir, "config.json")):
        final = json.load(open(os.path.join(vq_dir, "config.json")))["final"]
        vq_summary = {split: {k: final[split][k] for k in ("psnr", "ssim", "used") if k in final[split]}
                      for split in final}
    log(f"VQGAN: factor {vq.factor}, {vq.n_embed} codes, {vq_summary} ({timings['vqgan']:.0f}s)")

    # 3. checker on real scenes, then on reconstructions (the ceiling)
    t = time.time()
    tr_x, tr_c, tr_s = load_labelled_images(str(out / "scenes_train.tsv"), args.image_size, COLOR_NAMES, SHAPES)
    te_x, te_c, te_s = load_labelled_images(str(out / "scenes_test.tsv"), args.image_size, COLOR_NAMES, SHAPES)
    checker = train_checker(tr_x, tr_c, tr_s, COLOR_NAMES, SHAPES, steps=args.checker_steps,
                            batch_size=args.checker_batch, width=16,
                            seed=args.seed,
                            log=lambda m: log(m))
    real = checker_accuracy(checker, te_x, te_c, te_s)
    te_rec = reconstruct(vq, te_x)
    recon = checker_accuracy(checker, te_rec, te_c, te_s)
    recon_err = (te_rec - (te_x.float() / 127.5 - 1)).abs().mean().item() / 2  # mean |error| on [0, 1] pixels
    save_checker(checker, str(out / "checker.pt"), {"real_test": real, "recon_test": recon})
    timings["checker"] = time.time() - t
    log(f"checker on real test scenes {real}, on VQGAN reconstructions {recon} ({timings['checker']:.0f}s)")

    # 4. image_gen data + tokenizer
    t = time.time()
    data = out / "data"
    run([BIN / "ofa-synth", "image-gen", data, "--vqgan", vq_dir, "--num-images", args.num_images,
         "--image-size", args.image_size, "--seed", args.seed, "--captions-per-image", args.captions_per_image],
        out / "synth_image_gen.log")
    from ofa.tokenizer import train_sentencepiece

    captions = [line.rstrip("\n").split("\t")[2] for line in open(data / "image_gen_train.tsv")]
    corpus = captions + ["what is the complete image? caption:"] * 20
    train_sentencepiece(corpus, str(out / "tok"), vocab_size=300)
    # held-out captions: the first caption of the first test scenes
    rows = [line for line in open(data / "image_gen_test.tsv") if line.split("\t")[0].endswith("0")]
    test_file = data / "image_gen_check_test.tsv"
    test_file.write_text("".join(rows[:args.test_captions]))
    timings["data"] = time.time() - t
    log(f"data: {len(captions)} train rows, {min(len(rows), args.test_captions)} test captions "
        f"({timings['data']:.0f}s)")

    # 5. OFA training
    t = time.time()
    ckpt = out / "ckpt"
    codes_per_side = args.image_size // vq.factor
    task_args = ["--task", "image_gen", "--bpe-dir", out / "tok", "--code-image-size", args.image_size,
                 "--vqgan-path", vq_dir, "--code-dict-size", vq.n_embed, "--num-bins", 8, "--patch-image-size", 16,
                 "--sampling-topk", args.sampling_topk, "--temperature", args.temperature]
    run([BIN / "ofa-train", f"{data / 'image_gen_train.tsv'},{data / 'image_gen_valid.tsv'}", *task_args, *MODEL_ARGS,
         "--cpu", "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.0",
         "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--weight-decay", "0.01", "--clip-norm", "1.0",
         "--lr", args.ofa_lr, "--lr-scheduler", "polynomial_decay", "--warmup-updates", max(1, args.ofa_updates // 20),
         "--total-num-update", args.ofa_updates, "--max-update", args.ofa_updates,
         "--stop-time-hours", args.ofa_minutes / 60, "--batch-size", args.ofa_batch, "--num-workers", 0,
         "--disable-validation", "--no-epoch-checkpoints", "--save-interval", 1000000,
         "--save-interval-updates", 0, "--save-dir", ckpt, "--seed", 1, "--log-format", "simple",
         "--log-interval", 25, "--required-batch-size-multiple", 1], out / "ofa_train.log")
    timings["ofa_train"] = time.time() - t
    train_log = (out / "ofa_train.log").read_text()
    import re

    losses = [float(x) for x in re.findall(r"\| loss ([0-9.]+) \|", train_log)] or \
        [float(x) for x in re.findall(r"loss=([0-9.]+)", train_log)]
    updates = [int(x) for x in re.findall(r"num_updates[= ]([0-9]+)", train_log)]
    log(f"OFA: {max(updates) if updates else '?'} updates, last train loss {losses[-1] if losses else '?'} "
        f"(bits/token) ({timings['ofa_train']:.0f}s)")

    # 6. generation for held-out captions, checked
    t = time.time()
    res = out / "results"
    run([BIN / "ofa-evaluate", test_file, "--path", ckpt / "checkpoint_last.pt", "--gen-subset", "test",
         "--results-path", res, "--gen-images-path", res / "images",
         "--batch-size", 16, "--cpu", "--sampling-topk", args.sampling_topk, "--temperature", args.temperature],
        out / "ofa_evaluate.log")
    timings["generate"] = time.time() - t
    metrics = json.load(open(res / "test_metrics.json"))
    checked = check_generated(checker, json.load(open(res / "test_predict.json")))
    metrics.update(checker_scores(checked))
    labels = [tuple(c["label"]) for c in checked]
    guesses = [tuple(c["checker"]) for c in checked]
    shuffled = labels[:]
    random.Random(0).shuffle(shuffled)

    def acc(pairs_a, pairs_b):
        n = max(len(pairs_a), 1)
        c = sum(a[0] == b[0] for a, b in zip(pairs_a, pairs_b)) / n
        s = sum(a[1] == b[1] for a, b in zip(pairs_a, pairs_b)) / n
        both = sum(a == b for a, b in zip(pairs_a, pairs_b)) / n
        return {"color": c, "shape": s, "both": both, "n": len(pairs_a)}

    def majority(pairs):
        from collections import Counter

        n = max(len(pairs), 1)
        return {"color": Counter(p[0] for p in pairs).most_common(1)[0][1] / n,
                "shape": Counter(p[1] for p in pairs).most_common(1)[0][1] / n,
                "both": Counter(pairs).most_common(1)[0][1] / n, "n": len(pairs)}

    generated = acc(guesses, labels)
    table = {
        "chance (uniform)": {"color": 1 / len(COLOR_NAMES), "shape": 1 / len(SHAPES),
                             "both": 1 / (len(COLOR_NAMES) * len(SHAPES))},
        "majority class of the test captions": majority(labels),
        "generated vs shuffled captions (control)": acc(guesses, shuffled),
        "generated vs own caption": generated,
        "VQGAN reconstructions of real test scenes (ceiling)": recon,
        "real test scenes (checker accuracy)": real,
    }
    result = {
        "mode": "quick" if args.quick else "full", "args": vars(args), "scene_counts": counts,
        "vqgan": {"path": vq_dir, "factor": vq.factor, "codes": vq.n_embed, "codes_per_image": codes_per_side ** 2,
                  "summary": vq_summary, "mean_abs_pixel_error_01": recon_err},
        "ofa": {"updates": max(updates) if updates else None, "last_train_loss_bits": losses[-1] if losses else None,
                "test_code_acc": metrics.get("code_acc"), "test_code_nll_nats": metrics.get("code_nll")},
        "checker_accuracy": table, "evaluate_metrics": metrics, "timings_s": timings,
        "total_s": time.time() - t_start,
    }
    with open(out / "image_gen_check.json", "w") as f:
        json.dump(result, f, indent=1)

    print()
    print(f"image_gen check ({result['mode']}, {args.image_size}px scenes, {codes_per_side}x{codes_per_side} "
          f"codes of {vq.n_embed}, {result['ofa']['updates']} OFA updates, {generated['n']} held-out test captions)")
    print(f"{'checker accuracy (main object)':<55} {'colour':>7} {'shape':>7} {'both':>7}")
    for name, m in table.items():
        print(f"{name:<55} {m['color']:7.3f} {m['shape']:7.3f} {m['both']:7.3f}")
    print(f"teacher-forced test code accuracy {metrics.get('code_acc')}, code NLL {metrics.get('code_nll')} nats "
          f"(uniform: {__import__('math').log(vq.n_embed):.2f})")
    print(f"total {result['total_s'] / 60:.1f} min; JSON: {out / 'image_gen_check.json'}; images: {res / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
