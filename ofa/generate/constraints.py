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
- ``DetectionGrammar(names, bin_start, bin_end, eos)``: object lists, ``(<bin> x4, class name)*`` then EOS.
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


class DetectionGrammar:
    """Object-list decoding: ``(<bin> x4, class name)*`` then EOS (the detection target layout).

    Per row, after BOS: four ``<bin_i>`` tokens ``[bin_start, bin_end)``, then one class name, a path of
    ``names`` (a ``Trie`` of ``bpe(" " + name) + [eos]``, no BOS), then either the next object's first bin or
    EOS; EOS is also allowed before the first object (no objects). A name that is a prefix of a longer one may
    go on or end. After ``max_objects`` complete objects only EOS is allowed. The state is recomputed from the
    row's tokens each step (no per-hypothesis memory to reorder with the beams).
    """

    def __init__(self, names: Trie, bin_start: int, bin_end: int, eos: int, max_objects: int = 100):
        if not 4 <= bin_start < bin_end:
            raise ValueError(f"bin range must satisfy 4 <= start < end, got {bin_start},{bin_end}")
        self.names, self.bin_start, self.bin_end, self.eos = names, bin_start, bin_end, eos
        self.max_objects = max_objects

    def state(self, tokens: Tensor):
        """``(bins [N], node [N], objects [N])`` after each row of ``tokens [N, t]`` (BOS first, then a prefix the
        grammar allows): bins of the current object so far (0-4), its name's trie node (-1 before the name),
        and the number of objects begun. Vectorised over the row (the objects are runs of bins; only the
        current name, a few tokens, is walked), so a step costs O(t) tensor work, not O(t) trie steps."""
        table = self.names.compile(tokens.device)
        body = tokens[:, 1:]
        n, length = body.shape
        device = tokens.device
        if length == 0:
            zeros = torch.zeros(n, dtype=torch.long, device=device)
            return zeros, torch.full_like(zeros, -1), zeros
        is_bin = body.ge(self.bin_start) & body.lt(self.bin_end)
        starts = is_bin & ~torch.cat([torch.zeros(n, 1, dtype=torch.bool, device=device), is_bin[:, :-1]], 1)
        objects = starts.sum(1)
        pos = torch.arange(length, device=device).expand(n, -1)
        last_bin = torch.where(is_bin, pos, -1).max(1).values
        last_text = torch.where(is_bin, -1, pos).max(1).values
        ends_with_bin = is_bin[:, -1]
        bins = torch.where(ends_with_bin, (length - 1) - last_text,
                           torch.where(objects.gt(0), torch.full_like(objects, 4), torch.zeros_like(objects)))
        in_name = bins.eq(4)
        node = torch.where(in_name, torch.zeros_like(objects), torch.full_like(objects, -1))
        name_len = torch.where(in_name, (length - 1) - last_bin, torch.zeros_like(objects))
        for k in range(int(name_len.max())):
            idx = (last_bin + 1 + k).clamp(0, length - 1)
            tok = body.gather(1, idx[:, None]).squeeze(1)
            node = torch.where(name_len.gt(k), table.step(node, tok), node)
        return bins, node, objects

    def allowed(self, tokens: Tensor, vocab_size: int) -> Tensor:
        """Bool ``[N, V]`` of the tokens the grammar allows next."""
        table = self.names.compile(tokens.device)
        bins, node, objects = self.state(tokens)
        n = tokens.size(0)
        in_name = bins.eq(4)
        mask = torch.zeros(n, vocab_size, dtype=torch.bool, device=tokens.device)
        name_mask = table.allowed_mask(torch.where(in_name, node, torch.zeros_like(node)), vocab_size)
        name_done = in_name & name_mask[:, self.eos] & node.ge(0)  # the name so far is a whole class name
        name_mask[:, self.eos] = False
        mask[in_name] = name_mask[in_name]
        boxes = bins.lt(4) & bins.gt(0)
        mask[boxes, self.bin_start:self.bin_end] = True
        may_end = bins.eq(0) | name_done
        more = may_end & objects.lt(self.max_objects)
        mask[more, self.bin_start:self.bin_end] = True
        mask[may_end, self.eos] = True
        return mask

    def __call__(self, scores: Tensor, tokens: Tensor, prefix_lens: Optional[Tensor] = None) -> Tensor:
        return scores.masked_fill_(~self.allowed(tokens, scores.size(-1)), -math.inf)
