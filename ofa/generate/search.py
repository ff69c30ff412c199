"""Search strategies: pick candidate continuations from step log-probabilities.

``step(step, lprobs [B, beam, V], scores [B, beam, step])`` returns ``(cand_scores, cand_tokens,
cand_beams)``, each ``[B, K]``, with cumulative scores. Semantics follow fairseq's ``search.py``:
beam search proposes ``2 * beam`` candidates (so that EOS hypotheses can finish while ``beam``
remain active) and at step 0 expands only the first beam (all beams are identical there).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


class BeamSearch:
    stop_on_max_len = False

    def step(self, step: int, lprobs: Tensor, scores: Tensor):
        bsz, beam, vocab = lprobs.shape
        if step == 0:
            lprobs = lprobs[:, :1, :]
            prev = None
        else:
            prev = scores[:, :, step - 1 : step]
        return beam_candidates(lprobs, prev, min(beam * 2, lprobs.size(1) * vocab - 1))


def beam_candidates(lprobs: Tensor, prev: Optional[Tensor], k: int):
    """The ``k`` best continuations of every sample: ``topk`` of ``lprobs + prev`` flattened over its
    hypotheses and vocabulary, with the flat ``topk``'s values and indices.

    ``lprobs [B, H, V]`` step log-probabilities of ``H`` hypotheses, ``prev [B, H, 1]`` their scores so far
    (``None``: zero). Returns ``(scores [B, k], tokens [B, k], hypotheses [B, k])`` by descending score.

    A candidate of the flat top ``k + 1`` is among its own row's top ``k + 1``, and adding ``prev`` does not
    reorder a row: so each row keeps its top ``k + 1`` first and the second ``topk`` runs over ``H (k + 1)``
    entries instead of ``H V``, without forming the sum. Where two finite scores among a sample's best
    ``k + 1`` are equal (a forced prefix fills rows with one value), which of them the flat ``topk`` returns
    depends on its implementation, so the flat ``topk`` runs; ties among ``-inf`` (hypotheses already out of
    the search) are left in any order.
    """
    bsz, _, vocab = lprobs.shape
    kr = min(k + 1, vocab)
    rows = torch.topk(lprobs, kr, dim=-1)  # [B, H, kr]
    values = rows.values if prev is None else rows.values + prev
    top = torch.topk(values.reshape(bsz, -1), k + 1)  # k < H V, so H kr >= k + 1
    best = top.values
    if bool((best[:, 1:].eq(best[:, :-1]) & best[:, 1:].ne(-math.inf)).any()):
        flat = (lprobs if prev is None else lprobs + prev).reshape(bsz, -1)
        top = torch.topk(flat, k)
        return top.values, top.indices % vocab, torch.div(top.indices, vocab, rounding_mode="trunc")
    picked = top.indices[:, :k]
    tokens = rows.indices.reshape(bsz, -1).gather(1, picked)
    return best[:, :k], tokens, torch.div(picked, kr, rounding_mode="trunc")


class Sampling:
    """Draw one continuation per hypothesis from the (top-k / top-p truncated) distribution.

    Args:
        topk: sample among the k most likely tokens (-1: off).
        topp: sample from the smallest set whose probability mass exceeds p (-1: off).
    """

    stop_on_max_len = True

    def __init__(self, topk: int = -1, topp: float = -1.0, generator: torch.Generator = None):
        self.topk, self.topp, self.generator = topk, topp, generator

    def _truncate(self, lprobs: Tensor) -> Tensor:
        """Log-probabilities with every token outside the top-k / top-p set at -inf."""
        if self.topk > 0:
            kth = torch.topk(lprobs, min(self.topk, lprobs.size(-1)), dim=-1).values[..., -1:]
            lprobs = lprobs.masked_fill(lprobs < kth, float("-inf"))
        if 0 < self.topp < 1:
            sorted_lp, order = lprobs.sort(dim=-1, descending=True)
            cum = sorted_lp.exp().cumsum(-1)
            drop_sorted = (cum - sorted_lp.exp()) >= self.topp  # mass before this token already >= p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            lprobs = lprobs.masked_fill(drop, float("-inf"))
        return lprobs

    def step(self, step: int, lprobs: Tensor, scores: Tensor):
        bsz, beam, vocab = lprobs.shape
        if step == 0:
            lprobs = lprobs[:, ::beam, :].contiguous()
        probs = self._truncate(lprobs).exp()
        if step == 0:
            idx = torch.multinomial(probs.view(bsz, -1), beam, replacement=True, generator=self.generator)
        else:
            idx = torch.multinomial(probs.view(bsz * beam, -1), 1, replacement=True,
                                    generator=self.generator).view(bsz, beam)
        if step == 0:
            lprobs = lprobs.expand(bsz, beam, vocab)
        cand_scores = lprobs.gather(2, idx.unsqueeze(-1)).squeeze(-1)
        if step > 0:
            cand_scores = cand_scores + scores[:, :, step - 1]
        beams = torch.arange(beam, device=lprobs.device).repeat(bsz, 1)
        if step == 0:
            beams = torch.zeros_like(beams)
        return cand_scores, idx, beams
