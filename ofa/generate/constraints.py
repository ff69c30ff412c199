"""Logit processors: decoding constraints applied to a whole beam batch at once.

Each processor maps ``(scores [N, V], tokens [N, t], prefix_lens [N])`` to scores with disallowed
entries set to ``-inf``. ``tokens`` is every row's prefix so far, starting with BOS; ``prefix_lens``
counts each row's forced prompt tokens (0 without a prompt). They compose: the generator applies them
in order. Where they run follows the official generator: on the logits (so probabilities are
renormalised over the allowed set) for finetuned models, after log-softmax in zero-shot mode.

- ``TokenRange(start, end)``: only ids ``0..3`` and ``[start, end)`` (``<bin_i>`` boxes, ``<code_i>``).
- ``TrieConstraint(trie)``: only continuations of candidate answers (VQA, entailment, labels).
- ``NGramBlocker(n)``: no n-gram twice in a hypothesis (counting the BOS position), vectorised so it
  works on the CPU as well as on GPUs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ofa.generate.trie import Trie


class TokenRange:
    """Allow the four fairseq specials and the half-open id range ``[start, end)``."""

    def __init__(self, start: int, end: int):
        if not 4 <= start < end:
            raise ValueError(f"constraint range must satisfy 4 <= start < end, got {start},{end}")
        self.start, self.end = start, end

    @classmethod
    def parse(cls, spec: str) -> "TokenRange":
        """From the CLI form ``"start,end"``."""
        try:
            start, end = (int(x) for x in spec.split(","))
        except ValueError:
            raise ValueError(f"constraint_range must look like 'start,end', got {spec!r}") from None
        return cls(start, end)

    def __call__(self, scores: Tensor, tokens: Tensor, prefix_lens: Optional[Tensor] = None) -> Tensor:
        scores[:, 4:self.start] = -math.inf
        scores[:, self.end:] = -math.inf
        return scores


class TrieConstraint:
    """Allow only tokens that continue a path of ``trie``.

    Args:
        trie: candidate sequences, each ``[bos] + tokens + [eos]``.
        zero_shot: walk the trie with the whole decoded row (official zero-shot mode) instead of
            ``[bos] + tokens after the forced prompt``.
    """

    def __init__(self, trie: Trie, zero_shot: bool = False):
        self.trie = trie
        self.zero_shot = zero_shot

    def allowed(self, tokens: Tensor, prefix_lens: Optional[Tensor], vocab_size: int) -> Tensor:
        """Bool ``[N, V]`` of allowed next tokens."""
        table = self.trie.compile(tokens.device)
        n, t = tokens.shape
        if self.zero_shot or prefix_lens is None:
            prefix_lens = torch.zeros(n, dtype=torch.long, device=tokens.device)
        # every row's trie path starts with BOS (official: ``[0] + tokens[prefix_len + 1:]``)
        nodes = table.step(torch.zeros(n, dtype=torch.long, device=tokens.device), tokens[:, 0])
        for j in range(1, t):
            advance = prefix_lens.lt(j)
            nodes = torch.where(advance, table.step(nodes, tokens[:, j]), nodes)
        mask = table.allowed_mask(nodes, vocab_size)
        inside_prompt = prefix_lens.ge(t)  # rows still being forced through their prompt
        mask[inside_prompt] = True
        return mask

    def __call__(self, scores: Tensor, tokens: Tensor, prefix_lens: Optional[Tensor] = None) -> Tensor:
        return scores.masked_fill_(~self.allowed(tokens, prefix_lens, scores.size(-1)), -math.inf)


class NGramBlocker:
    """Ban every token that would repeat an n-gram already present in the row."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no_repeat_ngram_size must be >= 1, got {n}")
        self.n = n

    def __call__(self, scores: Tensor, tokens: Tensor, prefix_lens: Optional[Tensor] = None) -> Tensor:
        n = self.n
        t = tokens.size(1)
        if t < n:  # the official generator starts blocking at step + 2 - n >= 0 (t = step + 1)
            return scores
        if n == 1:
            return scores.scatter_(1, tokens, -math.inf)
        grams = tokens.unfold(1, n, 1)  # [N, t - n + 1, n]
        suffix = tokens[:, t - n + 1:]  # [N, n - 1]: the n-1 most recent tokens
        hit = grams[:, :, :-1].eq(suffix[:, None, :]).all(-1)  # [N, t - n + 1]
        if bool(hit.any()):
            rows, cols = hit.nonzero(as_tuple=True)
            scores[rows, grams[rows, cols, -1]] = -math.inf
        return scores
