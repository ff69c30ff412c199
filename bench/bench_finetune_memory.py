"""Peak memory and step time of finetuning: full (Adam) vs LoRA vs activation checkpointing.

Prints a table (and writes JSON with --out); it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_finetune_memory.py --arch ofa_large ofa_huge \
        --out bench/results/finetune_memory_cpu.json

Each (architecture, configuration) runs in a fresh subprocess, so its peak is its own:

- ``full``: every parameter trains, ``torch.optim.Adam`` (per-parameter loop, ``foreach=False``: no
  whole-model temporaries; fairseq's Adam keeps the same two moments);
- ``full_ckpt``: the same with ``checkpoint_activations`` (each encoder / decoder layer recomputed in backward);
- ``lora``: ``--lora-rank`` adapters (default 16, alpha 16) on q, k, v, out, fc1, fc2; only they train;
- ``lora_ckpt``: LoRA with activation checkpointing.

One step is forward, cross-entropy, backward and the optimizer step on random data (``--batch-size`` images of
``--image-size`` px, ``--src-len`` / ``--tgt-len`` tokens, the official 59,457-entry vocabulary); the step time is
the median of ``--steps`` steps after one warm-up step. Memory: on the CPU the process's resident set
(``VmRSS`` before the first step, ``VmHWM`` after the last; the high-water mark is reset once the model is built,
so the peak is the training peak) and the peak minus the RSS before training; on CUDA
``torch.cuda.max_memory_allocated`` (and ``memory_allocated`` before training). A configuration whose estimated
need (weights, plus gradients and two Adam moments of the trainable parameters, plus 3 GiB) exceeds the memory
available is skipped with the reason, as is one whose subprocess fails (e.g. killed when memory ran out).

Options: --arch (one or more), --configs, --batch-size, --image-size, --src-len, --tgt-len, --device (cpu, cuda),
--lora-rank, --steps, --threads, --timeout (seconds per configuration), --out PATH.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

CONFIGS = {
    "full": dict(lora_rank=0, checkpoint_activations=False),
    "full_ckpt": dict(lora_rank=0, checkpoint_activations=True),
    "lora": dict(lora_rank=-1, checkpoint_activations=False),  # -1: the --lora-rank given
    "lora_ckpt": dict(lora_rank=-1, checkpoint_activations=True),
}
OFFICIAL_TEXT_SYMBOLS = 50260  # the GPT-2 dict.txt: with <mask>, 8192 codes and 1000 bins, 59,457 entries
MARGIN_BYTES = 3 << 30
MIB = 1 << 20


def official_dictionary():
    """A fairseq Dictionary of the official size and layout (dummy text symbols)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(OFFICIAL_TEXT_SYMBOLS):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    for i in range(8192):
        d.add_symbol(f"<code_{i}>")
    for i in range(1000):
        d.add_symbol(f"<bin_{i}>")
    return d


def model_config(arch: str, name: str, lora_rank: int):
    from ofa.model import config_for_arch

    values = dict(CONFIGS[name])
    if values["lora_rank"] < 0:
        values.update(lora_rank=lora_rank, lora_alpha=float(lora_rank))
    return config_for_arch(arch, **values)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (``VmHWM``) of this process; False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args) -> Dict[str, Any]:
    """One configuration in this process: build, train ``1 + steps`` steps, measure."""
    import torch
    import torch.nn.functional as F

    from ofa.model import OFAModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    d = official_dictionary()
    model = OFAModel.from_config(model_config(args.arch, args.config, args.lora_rank), d).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-6, foreach=False)
    b, g = args.batch_size, torch.Generator().manual_seed(0)
    src = torch.randint(4, OFFICIAL_TEXT_SYMBOLS, (b, args.src_len), generator=g)
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    tgt = torch.randint(4, OFFICIAL_TEXT_SYMBOLS, (b, args.tgt_len + 1), generator=g)
    tgt[:, 0] = d.bos()
    net = dict(src_tokens=src, src_lengths=torch.full((b,), args.src_len), prev_output_tokens=tgt[:, :-1],
               patch_images=torch.randn(b, 3, args.image_size, args.image_size, generator=g),
               patch_masks=torch.ones(b, dtype=torch.bool))
    net = {k: v.to(device) for k, v in net.items()}
    target = tgt[:, 1:].to(device)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        peak_reset = _reset_peak_rss()
        before = _status_kib("VmRSS") * 1024
    times = []
    for step in range(1 + args.steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = model(**net)[0]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1))
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    trained = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    out = dict(arch=args.arch, config=args.config, status="ok", params=total, trainable=trained,
               before_training_mib=round(before / MIB), peak_mib=round(peak / MIB),
               peak_minus_before_mib=round((peak - before) / MIB), step_s=round(statistics.median(times), 3),
               loss=round(float(loss), 4))
    if not cuda and not peak_reset:
        out["note"] = "VmHWM could not be reset: the peak includes model construction"
    return out


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def estimated_bytes(arch: str, name: str, lora_rank: int) -> int:
    """Weights (fp32) + gradients and two Adam moments of the trainable parameters + MARGIN_BYTES."""
    import torch

    from ofa.model import OFAModel

    with torch.device("meta"):
        model = OFAModel.from_config(model_config(arch, name, lora_rank), official_dictionary())
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * total + 12 * trained + MARGIN_BYTES


def run_one(args, arch: str, name: str) -> Dict[str, Any]:
    need = estimated_bytes(arch, name, args.lora_rank)
    free = _available_bytes(args.device)
    if need > free:
        return dict(arch=arch, config=name, status="skipped",
                    reason=f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--arch", arch, "--configs", name,
           "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--src-len", str(args.src_len),
           "--tgt-len", str(args.tgt_len), "--device", args.device, "--lora-rank", str(args.lora_rank),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(arch=arch, config=name, status="skipped", reason=f"took over {args.timeout} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else tail[:200]
        return dict(arch=arch, config=name, status="skipped", reason=why)
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def table(rows: List[Dict[str, Any]]) -> str:
    head = (f"{'arch':<10} {'config':<10} {'trainable':>13} {'before MiB':>11} {'peak MiB':>9} "
            f"{'peak-before':>12} {'step s':>8}")
    out = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"{r['arch']:<10} {r['config']:<10} skipped: {r['reason']}")
            continue
        out.append(f"{r['arch']:<10} {r['config']:<10} {r['trainable']:>13,} {r['before_training_mib']:>11,} "
                   f"{r['peak_mib']:>9,} {r['peak_minus_before_mib']:>12,} {r['step_s']:>8.2f}")
    return "\n".join(out)


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["ofa_large", "ofa_huge"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--src-len", type=int, default=16)
    p.add_argument("--tgt-len", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        args.arch, args.config = args.arch[0], args.configs[0]
        print(json.dumps(worker(args)), flush=True)
        return 0
    rows = []
    for arch in args.arch:
        for name in args.configs:
            rows.append(run_one(args, arch, name))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.out:
        import torch

        payload = {
            "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
            "date": datetime.date.today().isoformat(),
            "machine": dict(platform=platform.platform(), cpus=os.cpu_count(), threads=args.threads,
                            torch=torch.__version__, device=args.device),
            "settings": dict(batch_size=args.batch_size, image_size=args.image_size, src_len=args.src_len,
                             tgt_len=args.tgt_len, lora_rank=args.lora_rank, lora_alpha=args.lora_rank,
                             lora_targets="q,k,v,out,fc1,fc2", steps=args.steps, optimizer="torch.optim.Adam"),
            "results": rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
