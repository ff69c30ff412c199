"""CIDEr-D (ofa/metrics/cider.py): hand-computed values, document frequencies, pickles, ordering."""
from __future__ import annotations

import math
import pickle
from collections import defaultdict

import numpy as np
import pytest

from ofa.metrics import CiderD, build_document_frequency, load_document_frequency, save_document_frequency
from ofa.metrics.cider import ngram_counts

GTS = {
    0: ["a man riding a red bike down the street", "a person rides a bicycle on a street"],
    1: ["a cat sitting on a wooden table", "a small cat sits on the table"],
    2: ["two dogs playing with a ball in the park", "dogs chase a ball on the grass"],
    3: ["a plate of food with broccoli and rice", "a dish of rice and vegetables"],
}


def test_ngram_counts_cover_orders_one_to_four():
    c = ngram_counts("a b a", 4)
    assert c[("a",)] == 2 and c[("b",)] == 1 and c[("a", "b")] == 1 and c[("b", "a")] == 1
    assert c[("a", "b", "a")] == 1 and not any(len(g) == 4 for g in c)


def test_identical_hypothesis_and_references_score_high():
    res = {k: [refs[0]] for k, refs in GTS.items()}
    gts = {k: [refs[0]] * 3 for k, refs in GTS.items()}
    mean, scores = CiderD().compute_score(gts, res)
    assert scores.shape == (4,)
    assert (scores > 5.0).all() and mean > 5.0


def test_two_document_corpus_matches_hand_computation():
    # df: every word and bigram appears in one document; ref_len = log 2.
    # "a b" vs "a b": cosine 1 for unigrams and bigrams, no 3/4-grams -> 10 * (1 + 1 + 0 + 0) / 4 = 5.
    # "a d" vs "c d": unigram cosine (log2^2) / (sqrt2 log2)^2 = 1/2, bigrams disjoint -> 10 * 0.5 / 4 = 1.25.
    mean, scores = CiderD().compute_score({0: ["a b"], 1: ["c d"]}, {0: ["a b"], 1: ["a d"]})
    np.testing.assert_allclose(scores, [5.0, 1.25])
    assert mean == pytest.approx(3.125)


def test_cached_df_idf_and_length_penalty_match_hand_computation():
    # "a b" against "a b c" with df(a) = 2 = number of documents, so "a" has idf 0.
    # unigrams: h = (0, L), r = (0, L, L)            -> cos = L^2 / (L * sqrt2 L) = 1/sqrt2
    # bigrams:  h = (ab: L), r = (ab: L, bc: L)       -> 1/sqrt2;  tri/4-grams: 0
    # length (official: bigram count) 1 vs 2          -> penalty exp(-1 / (2 * 6^2))
    df = {("a",): 2, ("b",): 1, ("c",): 1, ("a", "b"): 1, ("b", "c"): 1, ("a", "b", "c"): 1}
    _, scores = CiderD(df=df, ref_len=2).compute_score({0: ["a b c"]}, {0: ["a b"]})
    expected = 10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert scores[0] == pytest.approx(expected)


def test_score_is_mean_over_references():
    cider = CiderD(df={("x",): 1.0}, ref_len=4)
    _, one = cider.compute_score({0: ["x y"]}, {0: ["x y"]})
    _, two = cider.compute_score({0: ["x y", "p q r s"]}, {0: ["x y"]})
    _, other = cider.compute_score({0: ["p q r s"]}, {0: ["x y"]})
    assert two[0] == pytest.approx((one[0] + other[0]) / 2)


def test_hypothesis_counts_are_clipped_by_reference_counts():
    cider = CiderD(df={}, ref_len=10, sigma=1e9)  # no length penalty: isolate the clipping
    _, once = cider.compute_score({0: ["dog cat"]}, {0: ["dog cat"]})
    _, repeated = cider.compute_score({0: ["dog cat"]}, {0: ["dog dog dog cat"]})
    assert repeated[0] < once[0]


def test_corpus_mode_df_equals_build_document_frequency():
    res = {k: [refs[1]] for k, refs in GTS.items()}
    df, ref_len = build_document_frequency(GTS.values())
    assert ref_len == 4.0
    assert df[("a",)] == 4 and df[("cat",)] == 1 and df[("on", "a")] == 2
    corpus = CiderD().compute_score(GTS, res)[1]
    cached = CiderD(df=df, ref_len=ref_len).compute_score(GTS, res)[1]
    np.testing.assert_allclose(corpus, cached)


def test_more_shared_ngrams_scores_higher():
    hyps = ["a dog", "a cat on a table", "a cat sitting on the table", "a cat sitting on a wooden table"]
    scores = [CiderD().compute_score(GTS, {**{k: [v[0]] for k, v in GTS.items()}, 1: [h]})[1][1] for h in hyps]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_empty_hypothesis_scores_zero_without_nan():
    _, scores = CiderD().compute_score(GTS, {k: [""] for k in GTS})
    assert np.isfinite(scores).all() and (scores == 0).all()


def test_res_must_hold_exactly_one_hypothesis():
    with pytest.raises(ValueError, match="exactly one"):
        CiderD().compute_score({0: ["a"]}, {0: ["a", "b"]})
    with pytest.raises(ValueError, match="ref_len"):
        CiderD(df={("a",): 1})


def test_document_frequency_pickle_roundtrip_uses_official_layout(tmp_path):
    df, ref_len = build_document_frequency(GTS.values())
    path = tmp_path / "words.p"
    save_document_frequency(path, df, ref_len)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"document_frequency", "ref_len"} and raw["ref_len"] == 4.0
    loaded_df, loaded_len = load_document_frequency(path)
    assert loaded_df == df and loaded_len == ref_len
    res = {k: [v[1]] for k, v in GTS.items()}
    np.testing.assert_allclose(CiderD(df=str(path)).compute_score(GTS, res)[1],
                               CiderD(df=df, ref_len=ref_len).compute_score(GTS, res)[1])


def test_official_style_defaultdict_pickle_loads(tmp_path):
    # The official coco-*-words.p hold a defaultdict(float) and were written by Python 2 (latin1).
    df = defaultdict(float, {("a",): 3.0, ("a", "b"): np.float64(1.0)})
    path = tmp_path / "official.p"
    with open(path, "wb") as f:
        pickle.dump({"document_frequency": df, "ref_len": 5.0}, f, protocol=2)
    loaded, ref_len = load_document_frequency(path)
    assert loaded == {("a",): 3.0, ("a", "b"): 1.0} and ref_len == 5.0


class _Evil:
    def __reduce__(self):
        import os
        return (os.getcwd, ())


def test_document_frequency_loader_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.p"
    with open(path, "wb") as f:
        pickle.dump({"document_frequency": {}, "ref_len": _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_document_frequency(path)


def _ranks(x):
    return np.argsort(np.argsort(x))


def test_ranking_agrees_with_pycocoevalcap_cider():
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    res = {
        0: ["a man riding a bike down the street"],
        1: ["a dog on a table"],
        2: ["two dogs playing with a ball in the park"],
        3: ["a car parked on the road"],
    }
    _, ours = CiderD().compute_score(GTS, res)
    _, theirs = cider_module.Cider().compute_score(GTS, res)  # CIDEr (not -D): compare the ordering only
    ours_r, theirs_r = _ranks(ours), _ranks(np.asarray(theirs))
    n = len(ours)
    spearman = 1 - 6 * np.sum((ours_r - theirs_r) ** 2) / (n * (n * n - 1))
    assert spearman >= 0.8
