"""One-shot accelerator check: CUDA parity, a mixed-precision training step, generation speed.

Prints numbers (and writes them as JSON with ``--json``); it is not a test. Run on a GPU machine:

    python bench/device_check.py --arch ofa_base --json out.json

and locally as a dry run: ``.venv/bin/python bench/device_check.py --device cpu --arch ofa_test``.

1. Parity: the same seeded weights and inputs on the CPU (fp32) and on the device (fp32, TF32 off):
   max |logit difference| and whether beam-5 generations are identical.
2. Training: forward + backward + AdamW step under bf16 autocast (and one fp16 step with a grad
   scaler), median step time, samples/s and peak memory.
3. Generation: beam 5, cached (incremental) vs recomputed prefix, tokens/s, fp32 and bf16 weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary

from ofa.generate import SequenceGenerator
from ofa.model import OFAModel, config_for_arch


def ofa_dictionary(num_text: int = 50260) -> Dictionary:
    """A dictionary with the official layout and size (59457 entries); symbols are placeholders."""
    d = Dictionary()
    for i in range(num_text):
        d.add_symbol(f"t{i}")
    for sym in ["<mask>"] + [f"<code_{i}>" for i in range(8192)] + [f"<bin_{i}>" for i in range(1000)]:
        d.add_symbol(sym)
    return d


def seeded_model(arch: str, d: Dictionary, seed: int = 0) -> OFAModel:
    torch.manual_seed(seed)
    model = OFAModel.from_config(config_for_arch(arch), d)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def inputs(bsz: int, size: int, d: Dictionary, seed: int = 1, src_len: int = 16, tgt_len: int = 12):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 50000, (bsz, src_len), generator=g)
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    prev = torch.randint(4, 50000, (bsz, tgt_len), generator=g)
    prev[:, 0] = d.bos()
    return {"src_tokens": src, "src_lengths": torch.full((bsz,), src_len), "prev_output_tokens": prev,
            "patch_images": torch.randn(bsz, 3, size, size, generator=g).clamp(-1, 1),
            "patch_masks": torch.ones(bsz, dtype=torch.bool)}, torch.randint(4, 50000, (bsz, tgt_len), generator=g)


def to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def generate(model, d, batch, beam, length, use_cache):
    gen = SequenceGenerator([model], d, beam_size=beam, max_len_b=length, min_len=length, use_cache=use_cache)
    net = {k: v for k, v in batch.items() if k != "prev_output_tokens"}
    return gen.generate([model], {"net_input": net})


def parity(arch, d, device, size):
    model = seeded_model(arch, d)
    batch, _ = inputs(2, size, d)
    with torch.no_grad():
        cpu_logits = model(**batch)[0]
        cpu_gen = generate(model, d, batch, 5, 8, True)
        model.to(device)
        dev_logits = model(**to(batch, device))[0].cpu()
        dev_gen = generate(model, d, to(batch, device), 5, 8, True)
    same = [[h["tokens"].tolist() for h in s] for s in cpu_gen] == [[h["tokens"].cpu().tolist() for h in s] for s in dev_gen]
    return {"max_abs_logit_diff": float((cpu_logits - dev_logits).abs().max()),
            "argmax_equal": bool(torch.equal(cpu_logits.argmax(-1), dev_logits.argmax(-1))),
            "generation_identical": same}


def train_steps(arch, d, device, bsz, size, dtype, steps):
    model = seeded_model(arch, d).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    batch, target = inputs(bsz, size, d)
    batch, target = to(batch, device), target.to(device)
    times, losses = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(**batch)[0]
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), target.view(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
        losses.append(loss.item())
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"dtype": str(dtype).replace("torch.", ""), "batch": bsz, "image": size, "step_s": step,
            "samples_per_s": bsz / step, "peak_mem_gib": peak, "losses_finite": all(map(lambda x: x == x, losses))}


def gen_speed(arch, d, device, bsz, size, beam, length, dtype):
    model = seeded_model(arch, d).to(device=device, dtype=dtype)
    batch, _ = inputs(bsz, size, d)
    batch = to(batch, device)
    batch["patch_images"] = batch["patch_images"].to(dtype)
    out = {}
    with torch.no_grad():
        generate(model, d, batch, beam, 4, True)  # warm-up
        for cached in (True, False):
            sync(device)
            t = time.perf_counter()
            hyps = generate(model, d, batch, beam, length, cached)
            sync(device)
            sec = time.perf_counter() - t
            out["cached" if cached else "recompute"] = {"s": sec, "tok_per_s": bsz * length / sec}
            out.setdefault("tokens", []).append([h[0]["tokens"].tolist() for h in hyps])
    out["same_tokens"] = out["tokens"][0] == out["tokens"][1]
    out["speedup"] = out["recompute"]["s"] / out["cached"]["s"]
    del out["tokens"]
    return {"dtype": str(dtype).replace("torch.", ""), "batch": bsz, "beam": beam, "length": length, **out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="ofa_base")
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--gen-len", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d = ofa_dictionary()
    report = {"torch": torch.__version__, "arch": args.arch,
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    print(report, flush=True)
    report["parity_fp32"] = parity(args.arch, d, device, args.image_size)
    print("parity", report["parity_fp32"], flush=True)
    dtypes = [torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.float32]
    report["train"] = [train_steps(args.arch, d, device, args.train_batch, args.image_size, dt,
                                   args.steps if dt == dtypes[0] else 1) for dt in dtypes]
    for r in report["train"]:
        print("train", r, flush=True)
    gen_dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    report["generate"] = [gen_speed(args.arch, d, device, args.gen_batch, args.image_size, 5, args.gen_len, dt)
                          for dt in gen_dtypes]
    for r in report["generate"]:
        print("generate", r, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
