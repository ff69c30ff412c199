"""BART-style whole-word span masking, the text-infilling noise of OFA pretraining (docs/tasks.md 3.3).

Pure functions over token-id lists; randomness comes only from the ``numpy.random.Generator``
passed in, so a seed fixes the result. They reproduce fairseq's ``DenoisingDataset.add_whole_word_mask``
with ``mask_length="span-poisson"`` and ``random_ratio=0`` (OFA's settings: ``mask_ratio=0.3``,
``poisson_lambda=3``, ``replace_length=1``), applied to the text *without* its BOS/EOS:

1. The budget is ``ceil(mask_ratio * number of words)``; a word is a token where ``is_word_start``
   is true plus the continuation tokens after it (the first token always starts a word).
2. Span lengths, in words, are drawn from Poisson(``poisson_lambda``) (a categorical over
   ``k = 0, 1, ...`` cut where the probability falls below 1e-7) until they cover the budget; the
   last one is trimmed so the lengths sum to the budget exactly.
3. Every positive-length span starts at a distinct random word and covers that many whole words,
   clipped at the end of the text. Spans may overlap or touch; overlapping spans merge.
4. ``replace_length`` 1: the first token of each span becomes ``<mask>`` and the rest of the span
   is deleted (a token deleted by one span stays deleted even if another span starts there, so
   merged spans leave one ``<mask>``, touching ones two). 0: the span is deleted. -1: every token
   of the span becomes ``<mask>``.
5. Zero-length spans become insertions: that many ``<mask>`` tokens are inserted at random
   positions of the result (``add_insertion_noise``).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Sequence, Tuple

import numpy as np

REPLACE_LENGTHS = (-1, 0, 1)


@lru_cache(maxsize=16)
def poisson_span_probs(poisson_lambda: float, max_len: int = 128, tol: float = 1e-7) -> np.ndarray:
    """Normalised ``P(k)`` of Poisson(lambda) for ``k = 0..K`` (fairseq's truncated categorical).

    fairseq stops at the first term below ``tol``; here only past the mode, so a large lambda (whose
    first terms are tiny) does not collapse to ``k = 0``. For lambda = 3 both give ``k = 0..17``.
    """
    if poisson_lambda <= 0:
        raise ValueError(f"poisson_lambda must be > 0, got {poisson_lambda}")
    ps, term = [], math.exp(-poisson_lambda)
    for k in range(max_len):
        ps.append(term)
        if term < tol and k > poisson_lambda:
            break
        term *= poisson_lambda / (k + 1)
    p = np.asarray(ps, dtype=np.float64)
    return p / p.sum()


def whole_word_spans(is_word_start: Sequence[bool]) -> List[Tuple[int, int]]:
    """Token ranges ``[start, end)`` of the words; the first token always starts a word."""
    starts = [i for i, s in enumerate(is_word_start) if s or i == 0]
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(is_word_start)])]


def plan_spans(num_words: int, mask_ratio: float, poisson_lambda: float,
               rng: np.random.Generator) -> Tuple[List[Tuple[int, int]], int]:
    """Which words to mask.

    Returns:
        ``(spans, num_inserts)``: ``spans`` as ``(first word, length in words)``, lengths >= 1 summing to
        ``ceil(mask_ratio * num_words)``, distinct first words; ``num_inserts`` the number of zero-length
        spans, which become inserted ``<mask>`` tokens.
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    budget = int(math.ceil(num_words * mask_ratio))
    if budget == 0:
        return [], 0
    probs = poisson_span_probs(float(poisson_lambda))
    lengths = np.zeros(0, dtype=np.int64)
    while lengths.sum() < budget:  # draw in blocks of `budget`, as fairseq does
        lengths = np.concatenate([lengths, rng.choice(len(probs), size=budget, p=probs)])
    cum = np.cumsum(lengths)
    last = int(np.searchsorted(cum, budget))  # first index where the running sum reaches the budget
    lengths = lengths[:last + 1].copy()
    lengths[last] = budget - (cum[last - 1] if last > 0 else 0)
    positive = lengths[lengths > 0]
    num_inserts = int(len(lengths) - len(positive))
    starts = rng.permutation(num_words)[:len(positive)]
    return [(int(s), int(n)) for s, n in zip(starts, positive)], num_inserts


def span_mask(tokens: Sequence[int], is_word_start: Sequence[bool], mask_ratio: float, poisson_lambda: float,
              replace_length: int, rng: np.random.Generator, mask_token: int) -> List[int]:
    """Whole-word Poisson span masking of ``tokens`` (no BOS/EOS); see the module docstring.

    Args:
        tokens: token ids of the text.
        is_word_start: one flag per token, true where a new word begins.
        mask_ratio: fraction of words to mask (rounded up).
        poisson_lambda: mean span length in words.
        replace_length: 1 (one ``<mask>`` per span), 0 (delete spans) or -1 (one ``<mask>`` per token).
        rng: the source of randomness.
        mask_token: id of ``<mask>``.

    Returns:
        the noised token ids.
    """
    if len(tokens) != len(is_word_start):
        raise ValueError(f"{len(tokens)} tokens but {len(is_word_start)} word-start flags")
    if replace_length not in REPLACE_LENGTHS:
        raise ValueError(f"replace_length must be one of {REPLACE_LENGTHS}, got {replace_length}")
    tokens = list(tokens)
    if not tokens:
        return tokens
    words = whole_word_spans(is_word_start)
    spans, num_inserts = plan_spans(len(words), mask_ratio, poisson_lambda, rng)
    n = len(tokens)
    mask_at = np.zeros(n, dtype=bool)
    delete = np.zeros(n, dtype=bool)
    for first, length in spans:
        start = words[first][0]
        end = words[min(first + length, len(words)) - 1][1]
        if replace_length == -1:
            mask_at[start:end] = True
        else:
            mask_at[start] = True
            delete[start + 1:end] = True
            if replace_length == 0:
                delete[start] = True
    out = [mask_token if m else t for t, m, d in zip(tokens, mask_at, delete) if not d]
    return insert_masks(out, num_inserts, rng, mask_token)


def insert_masks(tokens: Sequence[int], num_inserts: int, rng: np.random.Generator, mask_token: int) -> List[int]:
    """Insert ``num_inserts`` ``<mask>`` tokens at random positions (fairseq ``add_insertion_noise``)."""
    tokens = list(tokens)
    if num_inserts <= 0:
        return tokens
    total = len(tokens) + num_inserts
    is_insert = np.zeros(total, dtype=bool)
    is_insert[rng.permutation(total)[:num_inserts]] = True
    it = iter(tokens)
    return [mask_token if ins else next(it) for ins in is_insert]
