"""Speed of this project's OFA against the official OFA code (OFA-Sys/OFA), in one process, same weights.

Both models are built for one architecture from the project's preset (``ofa.model.config``): the project's
``OFAModel`` is filled with seeded random weights (every parameter and BatchNorm statistic), the official
``OFAModel`` (``models/ofa/ofa.py`` of a checkout you name with ``--official``) is built by the official
``build_model`` from the same hyper-parameters and gets the same state dict. Nothing of the official code is
kept in this repository; ``bench/official_model.py`` says how it is imported (a private package name, no
``sys.path`` change, fairseq's registration decorators muted while importing).

First the two are checked to compute the same thing (fp32, eval mode); the run stops with exit status 1 if
they do not:

- the derived buffers (relative-position buckets, image position ids) each side computed are equal;
- teacher-forced logits: largest absolute difference, must be <= ``--atol``;
- beam search (beam 5, exactly ``--tgt-len`` tokens): every hypothesis' tokens equal;
- trie-constrained VQA decoding: beam 5, a trie of 3,129 random multi-token answers inserted as
  ``[bos] + answer + [eos]``, and the question forced as the decoder prompt (``prefix_tokens``, the official
  ``prev_output`` prompt layout, rows of different lengths): every hypothesis' tokens equal.
  The official side runs ``models/sequence_generator.py`` with ``fairseq.search.BeamSearch`` and
  ``utils/trie.py``, as the official ``tasks/ofa_task.py`` / ``tasks/mm_tasks/vqa_gen.py`` build them; the
  project side ``ofa.generate.SequenceGenerator`` and ``ofa.generate.Trie``.

Then each part is timed on the same inputs, official and project interleaved (official, project, official,
project ... for ``--repeats`` rounds, after one warm-up call each):

- ``train``: forward + label-smoothed cross-entropy (eps 0.1, one function for both) + backward +
  Adam step (fairseq's ``adam`` as each side's ``--optimizer adam`` runs it on the CPU: ``adam_step``;
  ``--use-old-adam`` gives the project fairseq's op-by-op arithmetic instead of the fused kernel), in train
  mode -> samples/s;
- ``eval``: teacher-forced forward under ``no_grad`` in eval mode -> samples/s;
- ``beam``: beam-5 generation of exactly ``--tgt-len`` tokens per sample -> generated tokens/s (batch x
  tgt-len, the best hypothesis' tokens; the beam computes 5 x as many);
- ``trie``: the trie-constrained VQA decoding above -> batches/s (the table also shows s/batch).

The table shows each side's median rate and the ratio project / official of the median rates: above 1 the
project is faster (the JSON also has every time, the minimum and the best rate). The project's train step is also counted with
``torch.utils.flop_counter.FlopCounterMode`` and both sides' achieved GFLOP/s are that count over their
median step time. On CUDA the device is synchronised around every timed call and the peak memory of each
side's calls is recorded (``torch.cuda.max_memory_allocated`` after a reset: ``peak_mem_mb``; both models stay
resident, so ``peak_above_start_mb``, that peak less what was allocated before the call, is the part's own
working memory); ``--bf16`` times both sides under ``torch.autocast(bfloat16)`` on the device, CPU included
(the agreement check stays fp32).

Run from the repository root (a checkout of OFA-Sys/OFA, e.g. ``git clone https://github.com/OFA-Sys/OFA``):

    .venv/bin/python bench/compare_official.py --official PATH/TO/OFA --arch ofa_tiny --repeats 3
    .venv/bin/python bench/compare_official.py --official PATH/TO/OFA --device cuda --bf16 --arch ofa_base \
        --out bench/results/compare_official_base.json
    .venv/bin/python bench/compare_official.py --official PATH/TO/OFA --parts none     # agreement only

Rates of one process can differ from another's by more than the repeats within it (on a shared 2-core CPU the
official side's moved by up to a quarter between processes): ``--processes N`` runs the whole comparison in ``N``
fresh processes, one after another, and reports per part the run with the median ratio together with every
run's ratio (``ratios``, ``ratio_range``; each run in full under ``runs``).

Defaults: ``--arch ofa_tiny``, ``--threads 2`` (CPU), batch 8, 256 px images, 12 source and 16 target
tokens, 5 repeats, every part. ``--bpe-dir`` (the GPT-2 BPE folder with ``dict.txt``) defaults to ``$OFA_BPE_DIR``.
``--out FILE.json`` writes the environment (torch, device, threads, official commit), the config, the
agreement numbers and every part's timings.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ofa.checkpoint import build_model_for_arch
from ofa.console import run_cli
from ofa.errors import ConfigError, unknown_name
from ofa.generate import SequenceGenerator, Trie
from ofa.io_utils import write_atomic
from ofa.model.config import ARCHS
from ofa.model.init import seeded_weights

PROG = "compare_official"
PARTS = ("train", "eval", "beam", "trie")
OFFICIAL_ARCHS = ("ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge")
TEXT_IDS = (4, 50000)  # random tokens are drawn from the BPE text range [lo, hi)
MAX_ANSWER_TOKENS = 4


def _load_sibling(name: str):
    """``bench/<name>.py`` as a module (``bench`` is not a package, and ``sys.path`` is left alone)."""
    module_name = f"ofa_bench_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


official_model = _load_sibling("official_model")


@dataclass
class BenchConfig:
    official: str
    bpe_dir: str
    arch: str = "ofa_tiny"
    device: str = "cpu"
    bf16: bool = False
    threads: int = 2
    batch_size: int = 8
    image_size: int = 256
    src_len: int = 12
    tgt_len: int = 16
    beam: int = 5
    trie_answers: int = 3129
    repeats: int = 5
    parts: Tuple[str, ...] = PARTS
    atol: float = 1e-4
    label_smoothing: float = 0.1
    lr: float = 1e-5
    seed: int = 0
    quick: bool = False
    old_adam: bool = False
    processes: int = 1
    out: Optional[str] = None


# ---------------------------------------------------------------------------- options
def default_bpe_dir() -> Optional[str]:
    return os.environ.get("OFA_BPE_DIR") or None


def parse_args(argv: Sequence[str]) -> BenchConfig:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--official", default=os.environ.get("OFA_OFFICIAL_CHECKOUT"),
                   help="checkout of OFA-Sys/OFA (default $OFA_OFFICIAL_CHECKOUT)")
    p.add_argument("--bpe-dir", default=default_bpe_dir(),
                   help="GPT-2 BPE folder with dict.txt (default $OFA_BPE_DIR)")
    p.add_argument("--arch", default="ofa_tiny", help=f"one of {', '.join(OFFICIAL_ARCHS)}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--bf16", action="store_true", help="time both sides under torch.autocast(bfloat16) on the device")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--src-len", type=int, default=12, help="source tokens, BOS and EOS included")
    p.add_argument("--tgt-len", type=int, default=16, help="target tokens (teacher forcing and beam search)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per part (each side once a round)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}, or 'none'")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed logit difference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny shapes and 1 repeat (for tests)")
    p.add_argument("--use-old-adam", action="store_true",
                   help="the project's train step uses fairseq's op-by-op Adam arithmetic (as ofa-train "
                        "--use-old-adam), not the fused kernel")
    p.add_argument("--processes", type=int, default=1,
                   help="run the comparison in N fresh processes and report the median run per part")
    p.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    a = p.parse_args(list(argv))
    if not a.official:
        raise official_model.OfficialCheckoutError(
            "pass --official PATH (a checkout of https://github.com/OFA-Sys/OFA) or set OFA_OFFICIAL_CHECKOUT")
    cfg = BenchConfig(official=a.official, bpe_dir=a.bpe_dir or "", arch=a.arch, device=a.device, bf16=a.bf16,
                      threads=a.threads, batch_size=a.batch_size, image_size=a.image_size, src_len=a.src_len,
                      tgt_len=a.tgt_len, repeats=a.repeats, parts=parse_parts(a.parts), atol=a.atol,
                      seed=a.seed, quick=a.quick, old_adam=a.use_old_adam, processes=a.processes, out=a.out)
    if a.quick:
        cfg = dataclasses.replace(cfg, batch_size=2, image_size=64, src_len=8, tgt_len=4, repeats=1)
    return cfg


def parse_parts(text: str) -> Tuple[str, ...]:
    if text.strip() == "none":
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in parts:
        if p not in PARTS:
            raise ConfigError(f"--parts: {unknown_name('part', p, PARTS + ('none',))}")
    return tuple(p for p in PARTS if p in parts)


def check_config(cfg: BenchConfig) -> None:
    """One-line errors for what the user gave, before anything is built."""
    official_model.check_checkout(cfg.official)
    if not cfg.bpe_dir:
        raise ConfigError("no BPE folder: pass --bpe-dir DIR (dict.txt, encoder.json, vocab.bpe) or set OFA_BPE_DIR")
    if not (Path(cfg.bpe_dir) / "dict.txt").is_file():
        raise ConfigError(f"BPE folder not found or without dict.txt: {cfg.bpe_dir} (pass --bpe-dir DIR)")
    if cfg.processes < 1:
        raise ConfigError(f"--processes: must be at least 1, got {cfg.processes}")
    if cfg.arch not in OFFICIAL_ARCHS or cfg.arch not in ARCHS:
        raise ConfigError(f"--arch: {unknown_name('architecture', cfg.arch, OFFICIAL_ARCHS)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available")
    for name in ("batch_size", "repeats", "tgt_len"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.src_len < 4:
        raise ConfigError("--src-len must be >= 4 (BOS, EOS and a question of 2 tokens)")
    if cfg.image_size < 16 or cfg.image_size % 16:
        raise ConfigError("--image-size must be a positive multiple of 16 (one patch per 16 x 16 pixels)")


# ---------------------------------------------------------------------------- weights and inputs


@dataclass
class Batch:
    net_input: Dict[str, torch.Tensor]  # src_tokens, src_lengths, patch_images, patch_masks
    prev_output_tokens: torch.Tensor  # [bos] + target[:-1]
    target: torch.Tensor  # random text + eos
    prefix_tokens: torch.Tensor  # the question (source without bos / eos), pad on the right

    def to(self, device: str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.net_input.items()}, self.prev_output_tokens.to(device),
                     self.target.to(device), self.prefix_tokens.to(device))


def make_batch(cfg: BenchConfig, dictionary) -> Batch:
    """Seeded inputs. Source rows have lengths ``src_len``, ``src_len - 1``, ``src_len - 2`` (repeating, right
    padded) so that padding is exercised; every sample has an image."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    bos, eos, pad = dictionary.bos(), dictionary.eos(), dictionary.pad()
    b, n = cfg.batch_size, cfg.src_len
    src = torch.full((b, n), pad, dtype=torch.long)
    prefix = torch.full((b, n - 2), pad, dtype=torch.long)
    lengths = torch.tensor([max(4, n - i % 3) for i in range(b)])
    for i, length in enumerate(lengths.tolist()):
        question = torch.randint(*TEXT_IDS, (length - 2,), generator=g)
        src[i, :length] = torch.cat([torch.tensor([bos]), question, torch.tensor([eos])])
        prefix[i, : length - 2] = question
    target = torch.randint(*TEXT_IDS, (b, cfg.tgt_len), generator=g)
    target[:, -1] = eos
    prev = torch.cat([torch.full((b, 1), bos, dtype=torch.long), target[:, :-1]], dim=1)
    images = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=g)
    net_input = dict(src_tokens=src, src_lengths=lengths, patch_images=images,
                     patch_masks=torch.ones(b, dtype=torch.bool))
    return Batch(net_input, prev, target, prefix)


def answer_sequences(cfg: BenchConfig, dictionary) -> List[List[int]]:
    """``cfg.trie_answers`` distinct random answers of 1 to ``MAX_ANSWER_TOKENS`` text tokens, each as
    ``[bos] + answer + [eos]`` (how the official VQA task fills its trie)."""
    rng = random.Random(cfg.seed + 2)
    seen, out = set(), []
    while len(out) < cfg.trie_answers:
        answer = tuple(rng.randrange(*TEXT_IDS) for _ in range(rng.randint(1, MAX_ANSWER_TOKENS)))
        if answer not in seen:
            seen.add(answer)
            out.append([dictionary.bos(), *answer, dictionary.eos()])
    return out


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, eps: float, pad: int) -> torch.Tensor:
    """fairseq's ``label_smoothed_nll_loss`` (summed, padding ignored), in fp32, for both models."""
    lprobs = torch.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1)
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = eps / (lprobs.size(-1) - 1)
    loss = (1.0 - eps - eps_i) * nll + eps_i * smooth
    return loss[target.ne(pad)].sum()


# ---------------------------------------------------------------------------- the two sides
@dataclass
class Side:
    """One implementation: its model and how to build its generators."""

    name: str
    model: torch.nn.Module
    make_generator: Callable[..., Any]  # (beam, min_len, max_len_b, trie or None) -> generator
    trie_class: type

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.net_input["src_tokens"], batch.net_input["src_lengths"], batch.prev_output_tokens,
                          patch_images=batch.net_input["patch_images"],
                          patch_masks=batch.net_input["patch_masks"])[0]

    def generate(self, generator, batch: Batch, prefix: bool) -> List[List[Dict[str, Any]]]:
        with torch.no_grad():
            return generator.generate([self.model], {"net_input": batch.net_input},
                                      prefix_tokens=batch.prefix_tokens if prefix else None)

    def trie(self, answers: List[List[int]], eos: int):
        trie = self.trie_class(eos)
        for ids in answers:
            trie.insert(ids)
        return trie


def build_sides(cfg: BenchConfig) -> Tuple[Side, Side, Any, Dict[str, Any]]:
    """``(official, project, dictionary, build report)``, both models in eval mode on ``cfg.device``."""
    code = official_model.load_official(cfg.official)
    torch.manual_seed(cfg.seed)
    project, dictionary = build_model_for_arch(cfg.arch, bpe_dir=cfg.bpe_dir)
    seeded_weights(project, cfg.seed).eval()
    with warnings.catch_warnings():  # the official position tables call torch.meshgrid without indexing=
        warnings.filterwarnings("ignore", message=".*torch.meshgrid.*", category=UserWarning)
        official, report = official_model.build_official_model(project, dictionary, cfg.arch, code,
                                                               cfg.image_size)
    report["official_commit"] = code.commit
    report["official_path"] = str(code.root)

    def official_generator(beam, min_len, max_len_b, trie):
        return code.SequenceGenerator([official], dictionary, beam_size=beam, max_len_a=0, max_len_b=max_len_b,
                                      min_len=min_len, search_strategy=code.BeamSearch(dictionary),
                                      constraint_trie=trie)

    def project_generator(beam, min_len, max_len_b, trie):
        return SequenceGenerator([project], dictionary, beam_size=beam, max_len_a=0, max_len_b=max_len_b,
                                 min_len=min_len, constraint_trie=trie)

    sides = (Side("official", official.to(cfg.device), official_generator, code.Trie),
             Side("project", project.to(cfg.device), project_generator, Trie))
    return sides[0], sides[1], dictionary, report


# ---------------------------------------------------------------------------- agreement
def _hypothesis_tokens(hyps) -> List[List[List[int]]]:
    return [[h["tokens"].tolist() for h in sample] for sample in hyps]


def _score_diff(a, b) -> float:
    diffs = [abs(float(x["score"]) - float(y["score"])) for sa, sb in zip(a, b) for x, y in zip(sa, sb)]
    return max(diffs, default=0.0)


def check_agreement(cfg: BenchConfig, official: Side, project: Side, batch: Batch, dictionary,
                    answers: List[List[int]], report: Dict[str, Any]) -> Dict[str, Any]:
    """The agreement numbers (fp32, eval mode); ``ok`` is False when any check fails."""
    with torch.no_grad():
        logits = {s.name: s.forward(batch).float() for s in (official, project)}
    diff = float((logits["official"] - logits["project"]).abs().max())
    beam_hyps = {s.name: s.generate(s.make_generator(cfg.beam, cfg.tgt_len, cfg.tgt_len, None), batch, False)
                 for s in (official, project)}
    trie_max_len = cfg.src_len + MAX_ANSWER_TOKENS + 2
    trie_hyps = {s.name: s.generate(s.make_generator(cfg.beam, 1, trie_max_len, s.trie(answers, dictionary.eos())),
                                    batch, True)
                 for s in (official, project)}
    beam_equal = _hypothesis_tokens(beam_hyps["official"]) == _hypothesis_tokens(beam_hyps["project"])
    trie_equal = _hypothesis_tokens(trie_hyps["official"]) == _hypothesis_tokens(trie_hyps["project"])
    in_trie = {tuple(a[1:]) for a in answers}
    plen = batch.prefix_tokens.ne(dictionary.pad()).sum(1).tolist()
    answers_in_trie = all(tuple(h["tokens"].tolist()[n:]) in in_trie
                          for hyps, n in zip(trie_hyps["project"], plen) for h in hyps)
    out = dict(
        derived_buffers_equal=report["derived_buffers_equal"],
        missing_keys=report["missing_keys"],
        arch_mismatches=report["arch_mismatches"],
        logits_max_abs_diff=diff,
        logits_atol=cfg.atol,
        logits_max_abs=float(logits["project"].abs().max()),
        beam_tokens_equal=beam_equal,
        beam_score_max_abs_diff=_score_diff(beam_hyps["official"], beam_hyps["project"]),
        beam_tokens_per_sample=[len(h[0]["tokens"]) - 1 for h in beam_hyps["project"]],
        trie_tokens_equal=trie_equal,
        trie_score_max_abs_diff=_score_diff(trie_hyps["official"], trie_hyps["project"]),
        trie_answers_in_trie=answers_in_trie,
        trie_best_answers=[h[0]["tokens"].tolist()[n:] for h, n in zip(trie_hyps["project"], plen)],
    )
    out["ok"] = bool(report["derived_buffers_equal"] and diff <= cfg.atol and beam_equal and trie_equal)
    return out


def agreement_failure(agreement: Dict[str, Any]) -> str:
    if not agreement["derived_buffers_equal"]:
        return "the derived buffers (relative-position buckets, image position ids) differ"
    if agreement["logits_max_abs_diff"] > agreement["logits_atol"]:
        return (f"logits differ by {agreement['logits_max_abs_diff']:.3g} > --atol {agreement['logits_atol']:g}")
    if not agreement["beam_tokens_equal"]:
        return "beam-search tokens differ"
    return "trie-constrained tokens differ"


# ---------------------------------------------------------------------------- timing
@dataclass
class PartResult:
    unit: str  # what one call produces ("samples", "tokens", "batches")
    per_call: float  # that many units per call
    seconds: Dict[str, List[float]] = field(default_factory=dict)
    peak_mem_mb: Dict[str, float] = field(default_factory=dict)  # CUDA: peak allocated during a call
    peak_above_start_mb: Dict[str, float] = field(default_factory=dict)  # that peak less what was allocated before
    extra: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(unit=self.unit, units_per_call=self.per_call)
        for side, secs in self.seconds.items():
            med = statistics.median(secs)
            out[side] = dict(median_s=med, min_s=min(secs), seconds=secs, rate_median=self.per_call / med,
                             rate_best=self.per_call / min(secs))
            if side in self.peak_mem_mb:
                out[side]["peak_mem_mb"] = self.peak_mem_mb[side]
                out[side]["peak_above_start_mb"] = self.peak_above_start_mb[side]
        if {"official", "project"} <= set(self.seconds):
            out["ratio_project_over_official"] = out["project"]["rate_median"] / out["official"]["rate_median"]
        out.update(self.extra)
        return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(calls: Dict[str, Callable[[], Any]], cfg: BenchConfig, result: PartResult) -> None:
    """One warm-up call per side, then ``cfg.repeats`` rounds of one timed call per side, in turn."""
    for fn in calls.values():
        fn()
    for _ in range(cfg.repeats):
        for side, fn in calls.items():
            if cfg.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                start = torch.cuda.memory_allocated()
            _sync(cfg.device)
            t0 = time.perf_counter()
            fn()
            _sync(cfg.device)
            result.seconds.setdefault(side, []).append(time.perf_counter() - t0)
            if cfg.device == "cuda":
                peak = torch.cuda.max_memory_allocated()
                result.peak_mem_mb[side] = max(result.peak_mem_mb.get(side, 0.0), peak / 2**20)
                result.peak_above_start_mb[side] = max(result.peak_above_start_mb.get(side, 0.0),
                                                       (peak - start) / 2**20)


def _autocast(cfg: BenchConfig):
    return torch.autocast(cfg.device, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()


def time_eval(cfg: BenchConfig, sides: Sequence[Side], batch: Batch) -> PartResult:
    def call(side: Side) -> Callable[[], Any]:
        def run():
            with torch.no_grad(), _autocast(cfg):
                return side.forward(batch)
        return run

    for s in sides:
        s.model.eval()
    result = PartResult("samples", cfg.batch_size)
    time_interleaved({s.name: call(s) for s in sides}, cfg, result)
    return result


def time_beam(cfg: BenchConfig, sides: Sequence[Side], batch: Batch) -> PartResult:
    def call(side: Side) -> Callable[[], Any]:
        generator = side.make_generator(cfg.beam, cfg.tgt_len, cfg.tgt_len, None)

        def run():
            with _autocast(cfg):
                return side.generate(generator, batch, False)
        return run

    result = PartResult("tokens", cfg.batch_size * cfg.tgt_len)
    time_interleaved({s.name: call(s) for s in sides}, cfg, result)
    return result


def time_trie(cfg: BenchConfig, sides: Sequence[Side], batch: Batch, answers, eos: int) -> PartResult:
    def call(side: Side) -> Callable[[], Any]:
        generator = side.make_generator(cfg.beam, 1, cfg.src_len + MAX_ANSWER_TOKENS + 2, side.trie(answers, eos))

        def run():
            with _autocast(cfg):
                return side.generate(generator, batch, True)
        return run

    result = PartResult("batches", 1)
    time_interleaved({s.name: call(s) for s in sides}, cfg, result)
    return result


def adam_step(side: Side, optimizer, fused: bool = True) -> Callable[[Any], Any]:
    """The Adam step each side trains with under ``--optimizer adam`` (without apex): fairseq's per-tensor
    loop for the official code; ``ofa.cli.fast_step``'s (installed by the project's commands) for the
    project: torch's fused kernel with fairseq's arithmetic (``fused``; equal up to float32 rounding), or
    fairseq's ops over lists of tensors (bit for bit, as ``--use-old-adam``). ``optimizer`` is marked for
    the fused kernel as ``FairseqAdam`` marks the one it builds."""
    import inspect

    from fairseq.optim import adam as fairseq_adam

    from ofa.cli.fast_step import foreach_adam_step

    fairseq_step = inspect.unwrap(fairseq_adam.Adam.step)  # past torch's profiling hook and any patch
    if side.name != "project":
        return fairseq_step
    optimizer.ofa_fused = fused
    return foreach_adam_step(fairseq_step)


def time_train(cfg: BenchConfig, sides: Sequence[Side], batch: Batch, pad: int) -> PartResult:
    """The train step of each side with its own Adam (``adam_step``; fairseq's AdamW-style decoupled weight
    decay 0.01). The first (warm-up) step of both sides runs on equal weights, so its losses are compared
    too; the project's step is counted in FLOPs."""
    from fairseq.optim.adam import Adam
    from torch.utils.flop_counter import FlopCounterMode

    losses: Dict[str, float] = {}

    def call(side: Side) -> Callable[[], Any]:
        optimizer = Adam(side.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        step = adam_step(side, optimizer, fused=not cfg.old_adam)

        def run():
            optimizer.zero_grad(set_to_none=True)
            with _autocast(cfg):
                logits = side.forward(batch)
            loss = label_smoothed_nll(logits, batch.target, cfg.label_smoothing, pad)
            loss.backward()
            step(optimizer)
            losses.setdefault(side.name, float(loss.detach()))
            return loss
        return run

    for s in sides:
        s.model.train()
    calls = {s.name: call(s) for s in sides}
    result = PartResult("samples", cfg.batch_size)
    time_interleaved(calls, cfg, result)
    counter = FlopCounterMode(display=False)
    with counter:
        calls["project"]()
    flops = counter.get_total_flops()
    result.extra["project_adam"] = "fairseq ops over lists" if cfg.old_adam else "fused kernel"
    result.extra["first_loss"] = losses
    result.extra["first_loss_abs_diff"] = abs(losses["official"] - losses["project"])
    result.extra["project_step_gflop"] = flops / 1e9
    result.extra["achieved_gflops_median"] = {side: flops / 1e9 / statistics.median(secs)
                                              for side, secs in result.seconds.items()}
    for s in sides:
        s.model.eval()
    return result


# ---------------------------------------------------------------------------- report
def environment(cfg: BenchConfig, report: Dict[str, Any]) -> Dict[str, Any]:
    import fairseq

    env = dict(torch=torch.__version__, fairseq=getattr(fairseq, "__version__", "unknown"),
               python=platform.python_version(), platform=platform.platform(), device=cfg.device,
               threads=torch.get_num_threads(), official_commit=report["official_commit"],
               official_path=report["official_path"])
    if cfg.device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def print_table(parts: Dict[str, Dict[str, Any]]) -> None:
    head = f"{'part':<7} {'unit':<10} {'official':>12} {'project':>12} {'project/official':>17}"
    print(head + "\n" + "-" * len(head))
    for name, s in parts.items():
        unit = f"{s['unit']}/s"
        print(f"{name:<7} {unit:<10} {s['official']['rate_median']:>12.2f} {s['project']['rate_median']:>12.2f} "
              f"{s['ratio_project_over_official']:>16.2f}x")
        if name == "trie":
            print(f"{'':<7} {'s/batch':<10} {s['official']['median_s']:>12.3f} {s['project']['median_s']:>12.3f}")
    if "train" in parts:
        t = parts["train"]
        g = t["achieved_gflops_median"]
        print(f"train step: {t['project_step_gflop']:.1f} GFLOP (project, FlopCounterMode); achieved GFLOP/s "
              f"official {g['official']:.1f}, project {g['project']:.1f}")
    print("(rates are medians over the repeats; project/official > 1: the project is faster)")


def print_agreement(agreement: Dict[str, Any], arch: str) -> None:
    print(f"agreement: logits max |diff| {agreement['logits_max_abs_diff']:.3g} (atol {agreement['logits_atol']:g}, "
          f"max |logit| {agreement['logits_max_abs']:.3g}); derived buffers equal "
          f"{agreement['derived_buffers_equal']}; beam tokens equal {agreement['beam_tokens_equal']} "
          f"(score diff {agreement['beam_score_max_abs_diff']:.2g}); trie tokens equal "
          f"{agreement['trie_tokens_equal']} (score diff {agreement['trie_score_max_abs_diff']:.2g})")
    if agreement["arch_mismatches"]:
        print(f"note: the official {arch} defaults differ from the project's "
              f"preset in {agreement['arch_mismatches']} (the official model was built with the project's values)")


def write_json(path: str, payload: Dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, indent=2))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- main
def run(cfg: BenchConfig) -> int:
    check_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    official, project, dictionary, report = build_sides(cfg)
    sides = (official, project)
    batch = make_batch(cfg, dictionary).to(cfg.device)
    answers = answer_sequences(cfg, dictionary)
    n_params = sum(p.numel() for p in project.model.parameters())
    print(f"{cfg.arch}: {n_params / 1e6:.1f}M parameters; official {report['official_commit'][:12]} at "
          f"{report['official_path']}; torch {torch.__version__}, {cfg.device}, {torch.get_num_threads()} threads; "
          f"batch {cfg.batch_size}, image {cfg.image_size}, src {cfg.src_len}, tgt {cfg.tgt_len}, beam {cfg.beam}")
    agreement = check_agreement(cfg, official, project, batch, dictionary, answers, report)
    print_agreement(agreement, cfg.arch)
    payload: Dict[str, Any] = dict(environment=environment(cfg, report), config=dataclasses.asdict(cfg),
                                   params=n_params, agreement=agreement, parts={})
    if not agreement["ok"]:
        if cfg.out:
            write_json(cfg.out, payload)
        print(f"{PROG}: error: the official and the project model disagree: {agreement_failure(agreement)}",
              file=sys.stderr)
        return 1
    timers = dict(eval=lambda: time_eval(cfg, sides, batch), beam=lambda: time_beam(cfg, sides, batch),
                  trie=lambda: time_trie(cfg, sides, batch, answers, dictionary.eos()),
                  train=lambda: time_train(cfg, sides, batch, dictionary.pad()))
    for part in ("eval", "beam", "trie", "train"):  # train last: its optimizer steps change the weights
        if part in cfg.parts:
            payload["parts"][part] = timers[part]().summary()
    if payload["parts"]:
        print_table(payload["parts"])
    if cfg.out:
        write_json(cfg.out, payload)
    return 0


def child_argv(argv: Sequence[str], out: str) -> List[str]:
    """The command line of one of ``--processes``' runs: ``argv`` with ``--processes 1 --out OUT`` appended
    (argparse keeps an option's last value, so whatever spelling ``argv`` used, abbreviations included, the
    run neither spawns runs of its own nor writes the combined file)."""
    return [*argv, "--processes", "1", "--out", out]


def combine_runs(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One payload from the JSON of several runs of the same comparison: per part the run whose ratio is the
    median (the lower middle one for an even count) with ``ratios`` (every run's, in run order),
    ``ratio_range`` and ``median_run``; the first run's environment and agreement; every run's parts under
    ``runs``."""
    parts: Dict[str, Dict[str, Any]] = {}
    for name in runs[0]["parts"]:
        ratios = [run["parts"][name]["ratio_project_over_official"] for run in runs]
        middle = sorted(range(len(runs)), key=lambda i: ratios[i])[(len(runs) - 1) // 2]
        parts[name] = dict(runs[middle]["parts"][name], ratios=ratios, ratio_range=[min(ratios), max(ratios)],
                           median_run=middle)
    config = dict(runs[0]["config"], processes=len(runs), out=None)
    return dict(environment=runs[0]["environment"], config=config, params=runs[0]["params"],
                agreement=runs[0]["agreement"], parts=parts, runs=[run["parts"] for run in runs])


def run_processes(cfg: BenchConfig, argv: Sequence[str]) -> int:
    """``--processes N``: the comparison in ``N`` fresh processes, one after another, then the combined table
    (``combine_runs``). A run that fails stops the rest with its exit status."""
    check_config(cfg)
    runs = []
    with tempfile.TemporaryDirectory(prefix="compare_official_") as tmp:
        for i in range(cfg.processes):
            out = str(Path(tmp) / f"run{i}.json")
            print(f"--- process {i + 1} of {cfg.processes}", flush=True)
            status = subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_argv(argv, out)],
                                    check=False).returncode
            if status != 0:
                return status
            runs.append(json.loads(Path(out).read_text(encoding="utf-8")))
    payload = combine_runs(runs)
    if payload["parts"]:
        print(f"--- {cfg.processes} processes: per part the run with the median ratio")
        print_table(payload["parts"])
        for name, part in payload["parts"].items():
            print(f"{name:<7} ratios {', '.join(f'{r:.2f}' for r in part['ratios'])} "
                  f"(range {part['ratio_range'][0]:.2f}-{part['ratio_range'][1]:.2f}x)")
    if cfg.out:
        write_json(cfg.out, payload)
    return 0


def _main(argv: List[str]) -> int:
    cfg = parse_args(argv)
    return run_processes(cfg, argv) if cfg.processes > 1 else run(cfg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command: one-line errors for mistakes in what was given (exit status 2), 1 when the models
    disagree, 0 otherwise."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
