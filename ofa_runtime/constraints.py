"""Decoding constraints over numpy arrays, the same rules as ``ofa.generate.constraints``.

Each maps ``(scores [N, V] float32, tokens [N, t] int64, prefix_lens [N] or None)`` to ``scores`` with the
disallowed entries at ``-inf`` (in place). ``tokens`` is each row's prefix so far, from BOS; ``prefix_lens``
counts each row's forced prompt tokens.

- ``TokenRange(start, end)``: only ids ``0..3`` and ``[start, end)`` (``<bin_i>`` for grounding).
- ``AnswerTrie(sequences, eos)``: only continuations of the candidate sequences (``[bos] + answer + [eos]``);
  a row that fell off the trie may only end (``eos``), rows still inside their prompt are left alone.
- ``NGramBlocker(n)``: no n-gram twice in a row (counting the BOS position).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

NEG_INF = np.float32(-np.inf)


class TokenRange:
    def __init__(self, start: int, end: int):
        if not 4 <= start < end:
            raise ValueError(f"constraint range must satisfy 4 <= start < end, got {start},{end}")
        self.start, self.end = int(start), int(end)

    def __call__(self, scores: np.ndarray, tokens: np.ndarray, prefix_lens: Optional[np.ndarray] = None) -> np.ndarray:
        scores[:, 4:self.start] = NEG_INF
        scores[:, self.end:] = NEG_INF
        return scores


class AnswerTrie:
    """A prefix tree of candidate sequences.

    Args:
        sequences: token id lists, each ``[bos] + answer tokens + [eos]``.
        eos: the end id (the only token allowed after falling off the tree).
        zero_shot: walk the whole decoded row, prompt included (the official zero-shot mode).
    """

    def __init__(self, sequences: Sequence[Sequence[int]], eos: int, zero_shot: bool = False):
        self.eos = int(eos)
        self.zero_shot = zero_shot
        self.children: List[Dict[int, int]] = [{}]
        complete = set()
        for seq in sequences:
            node = 0
            for tok in seq:
                tok = int(tok)
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                node = nxt
            if seq and int(seq[-1]) == self.eos:
                complete.add(tuple(int(t) for t in seq))
        self.num_sequences = len(complete)
        self._lists = [np.fromiter(c.keys(), dtype=np.int64, count=len(c)) for c in self.children]

    def node(self, row: np.ndarray, prefix_len: int) -> int:
        """The node a row's prefix reaches (BOS, then the tokens after its prompt); -1 off the tree."""
        node = self.children[0].get(int(row[0]), -1)
        for j in range(max(1, prefix_len + 1), len(row)):
            if node < 0:
                break
            node = self.children[node].get(int(row[j]), -1)
        return node

    def __call__(self, scores: np.ndarray, tokens: np.ndarray, prefix_lens: Optional[np.ndarray] = None) -> np.ndarray:
        n, t = tokens.shape
        allowed = np.zeros(scores.shape, dtype=bool)
        for r in range(n):
            plen = 0 if (self.zero_shot or prefix_lens is None) else int(prefix_lens[r])
            if plen >= t:  # still being forced through its prompt
                allowed[r] = True
                continue
            node = self.node(tokens[r], plen)
            if node < 0:
                allowed[r, self.eos] = True
            else:
                allowed[r, self._lists[node]] = True
        scores[~allowed] = NEG_INF
        return scores


class NGramBlocker:
    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no_repeat_ngram_size must be >= 1, got {n}")
        self.n = int(n)

    def __call__(self, scores: np.ndarray, tokens: np.ndarray, prefix_lens: Optional[np.ndarray] = None) -> np.ndarray:
        n, t = self.n, tokens.shape[1]
        if t < n:
            return scores
        rows = np.arange(tokens.shape[0])
        if n == 1:
            scores[rows[:, None], tokens] = NEG_INF
            return scores
        grams = np.lib.stride_tricks.sliding_window_view(tokens, n, axis=1)  # [N, t - n + 1, n]
        suffix = tokens[:, t - n + 1:]  # [N, n - 1]
        hit = (grams[:, :, :-1] == suffix[:, None, :]).all(-1)
        r, c = np.nonzero(hit)
        scores[r, grams[r, c, -1]] = NEG_INF
        return scores
