"""Whole-word Poisson span masking (data_utils/noising.py)."""
import math

import numpy as np
import pytest

from ofa.data_utils.noising import insert_masks, plan_spans, poisson_span_probs, span_mask, whole_word_spans

MASK = 9999


def text(num_words, subwords=2):
    """Distinct token ids; every word is ``subwords`` tokens (a start plus continuations)."""
    tokens = list(range(100, 100 + num_words * subwords))
    starts = [i % subwords == 0 for i in range(len(tokens))]
    return tokens, starts


def kept_tokens(out):
    return [t for t in out if t != MASK]


def deleted_runs(tokens, out):
    """Maximal runs of original positions missing from ``out`` (tokens are distinct)."""
    kept = set(kept_tokens(out))
    runs, cur = [], []
    for i, t in enumerate(tokens):
        if t in kept:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(i)
    return runs + ([cur] if cur else [])


def test_whole_word_spans():
    assert whole_word_spans([True, False, True, True, False, False]) == [(0, 2), (2, 3), (3, 6)]
    assert whole_word_spans([False, False, True]) == [(0, 2), (2, 3)]  # the first token starts a word
    assert whole_word_spans([]) == []


def test_poisson_probabilities():
    p = poisson_span_probs(3.0)
    assert p.sum() == pytest.approx(1.0) and len(p) == 18  # fairseq's k = 0..17 for lambda 3
    assert p[3] == pytest.approx(math.exp(-3) * 27 / 6, rel=1e-6)
    with pytest.raises(ValueError):
        poisson_span_probs(0.0)


@pytest.mark.parametrize("num_words,ratio", [(10, 0.3), (37, 0.3), (200, 0.3), (50, 0.5), (7, 0.1)])
def test_planned_lengths_sum_to_the_rounded_up_budget(num_words, ratio):
    for seed in range(20):
        spans, inserts = plan_spans(num_words, ratio, 3.0, np.random.default_rng(seed))
        assert sum(n for _, n in spans) == math.ceil(num_words * ratio)
        assert all(n >= 1 for _, n in spans) and inserts >= 0
        starts = [s for s, _ in spans]
        assert len(set(starts)) == len(starts) and all(0 <= s < num_words for s in starts)


def test_mask_ratio_respected_within_rounding():
    tokens, starts = text(200)
    budget_words = math.ceil(200 * 0.3)
    covered = []
    for seed in range(30):
        out = span_mask(tokens, starts, 0.3, 3.0, -1, np.random.default_rng(seed), MASK)
        masked_words = (len(tokens) - len(kept_tokens(out))) // 2
        assert masked_words <= budget_words  # overlaps and the text end can only lose coverage
        covered.append(masked_words / 200)
    assert 0.2 <= float(np.mean(covered)) <= 0.3


@pytest.mark.parametrize("replace_length", [-1, 0, 1])
def test_only_whole_words_are_removed_and_order_is_kept(replace_length):
    tokens, starts = text(60, subwords=3)
    for seed in range(20):
        out = span_mask(tokens, starts, 0.3, 3.0, replace_length, np.random.default_rng(seed), MASK)
        kept = kept_tokens(out)
        assert kept == sorted(kept)  # surviving tokens keep their order
        for run in deleted_runs(tokens, out):
            assert run[0] % 3 == 0 and (run[-1] + 1) % 3 == 0  # whole words only


def test_replace_length_one_leaves_one_mask_per_span():
    tokens, starts = text(80, subwords=2)
    words = whole_word_spans(starts)
    for seed in range(30):
        out = span_mask(tokens, starts, 0.3, 3.0, 1, np.random.default_rng(seed), MASK)
        spans, inserts = plan_spans(len(words), 0.3, 3.0, np.random.default_rng(seed))
        # a span's <mask> survives unless another span's tail swallowed its first word
        tails = {w for s, n in spans for w in range(s + 1, min(s + n, len(words)))}
        assert out.count(MASK) == sum(1 for s, _ in spans if s not in tails) + inserts
        # every removed run left at least one <mask> in its place (nothing vanishes silently)
        for run in deleted_runs(tokens, out):
            before = tokens[run[0] - 1] if run[0] > 0 else None
            i = out.index(before) + 1 if before is not None else 0
            assert out[i] == MASK


def test_single_word_budget_is_one_mask_for_the_whole_word():
    tokens, starts = text(5, subwords=3)  # 15 tokens, 5 words; ratio 0.2 -> budget of one word
    for seed in range(10):
        rng = np.random.default_rng(seed)
        spans, inserts = plan_spans(5, 0.2, 3.0, np.random.default_rng(seed))
        out = span_mask(tokens, starts, 0.2, 3.0, 1, rng, MASK)
        assert len(spans) == 1 and spans[0][1] == 1
        assert len(out) == len(tokens) - 3 + 1 + inserts
        assert out.count(MASK) == 1 + inserts


def test_zero_length_spans_become_insertions():
    tokens, starts = text(20, subwords=1)
    seen = 0
    for seed in range(50):  # lambda 0.5: P(length 0) = 0.61, so many plans hold zero-length spans
        spans, inserts = plan_spans(20, 0.1, 0.5, np.random.default_rng(seed))
        out = span_mask(tokens, starts, 0.1, 0.5, 1, np.random.default_rng(seed), MASK)
        if inserts == 0:
            continue
        seen += 1
        masked_words = len({w for s, n in spans for w in range(s, min(s + n, 20))})  # clipped at the end
        assert len(out) == len(tokens) - masked_words + len(spans) + inserts  # budget 2: spans never overlap
        assert out.count(MASK) == len(spans) + inserts
    assert seen > 5


def test_replace_length_zero_deletes_and_minus_one_masks_every_token():
    tokens, starts = text(40, subwords=2)
    for seed in range(10):
        spans, inserts = plan_spans(40, 0.3, 3.0, np.random.default_rng(seed))
        deleted = span_mask(tokens, starts, 0.3, 3.0, 0, np.random.default_rng(seed), MASK)
        assert deleted.count(MASK) == inserts
        every = span_mask(tokens, starts, 0.3, 3.0, -1, np.random.default_rng(seed), MASK)
        assert len(every) == len(tokens) + inserts


def test_deterministic_with_a_seed():
    tokens, starts = text(50, subwords=2)
    a = span_mask(tokens, starts, 0.3, 3.0, 1, np.random.default_rng(7), MASK)
    b = span_mask(tokens, starts, 0.3, 3.0, 1, np.random.default_rng(7), MASK)
    assert a == b
    others = {tuple(span_mask(tokens, starts, 0.3, 3.0, 1, np.random.default_rng(s), MASK)) for s in range(5)}
    assert len(others) > 1


def test_edge_cases():
    rng = np.random.default_rng(0)
    assert span_mask([], [], 0.3, 3.0, 1, rng, MASK) == []
    assert span_mask([5, 6], [True, True], 0.0, 3.0, 1, rng, MASK) == [5, 6]
    assert insert_masks([1, 2], 0, rng, MASK) == [1, 2]
    out = insert_masks([1, 2], 3, rng, MASK)
    assert kept_tokens(out) == [1, 2] and out.count(MASK) == 3
    with pytest.raises(ValueError):
        span_mask([1, 2], [True], 0.3, 3.0, 1, rng, MASK)
    with pytest.raises(ValueError):
        span_mask([1, 2], [True, True], 0.3, 3.0, 2, rng, MASK)
