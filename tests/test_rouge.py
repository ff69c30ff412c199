"""ROUGE-1/2/L (ofa/metrics/rouge.py) on hand-computed cases."""
import pytest

from ofa.metrics.rouge import corpus_rouge, lcs_length, rouge_l, rouge_n, rouge_scores, tokenize


def f1(p, r):
    return 2 * p * r / (p + r)


def test_tokenize_lowercases_and_splits_on_punctuation():
    assert tokenize("U.S. wins, 2-1!") == ["u", "s", "wins", "2", "1"]
    assert tokenize("police kill # gunmen") == ["police", "kill", "gunmen"]  # Gigaword's '#' digits vanish
    assert tokenize("  ") == []


def test_same_length_sentences():
    s = rouge_scores("the cat sat on the mat", "The cat is on the mat.")
    # unigrams: the x2, cat, on, mat match -> 5 of 6 on both sides
    assert s["rouge1"].precision == pytest.approx(5 / 6) and s["rouge1"].fmeasure == pytest.approx(5 / 6)
    # bigrams: the-cat, on-the, the-mat -> 3 of 5
    assert s["rouge2"].fmeasure == pytest.approx(3 / 5)
    # LCS "the cat on the mat" = 5
    assert s["rougeL"].fmeasure == pytest.approx(5 / 6)


def test_word_order_changes_rouge_l_and_2_not_1():
    ref = "police killed the gunman"
    a, b = rouge_scores("police kill the gunman", ref), rouge_scores("the gunman kill police", ref)
    assert a["rouge1"].fmeasure == b["rouge1"].fmeasure == pytest.approx(3 / 4)
    assert a["rouge2"].fmeasure == b["rouge2"].fmeasure == pytest.approx(1 / 3)  # only "the gunman"
    assert a["rougeL"].fmeasure == pytest.approx(3 / 4)  # police .. the gunman
    assert b["rougeL"].fmeasure == pytest.approx(2 / 4)  # the gunman


def test_precision_recall_differ_for_different_lengths():
    s = rouge_scores("a b c", "a b c d e")
    assert (s["rouge1"].precision, s["rouge1"].recall) == (1.0, pytest.approx(3 / 5))
    assert s["rouge1"].fmeasure == pytest.approx(f1(1.0, 0.6))  # 0.75
    assert (s["rouge2"].precision, s["rouge2"].recall) == (1.0, pytest.approx(2 / 4))
    assert s["rouge2"].fmeasure == pytest.approx(2 / 3)
    assert s["rougeL"].fmeasure == pytest.approx(0.75)


def test_ngram_counts_are_clipped():
    s = rouge_n(["the", "the", "the"], ["the", "cat"], 1)
    assert (s.precision, s.recall) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert s.fmeasure == pytest.approx(f1(1 / 3, 1 / 2))  # 0.4


def test_lcs_is_a_subsequence_not_a_substring():
    assert lcs_length("a x b y c".split(), "a b c".split()) == 3
    assert lcs_length([], ["a"]) == 0
    s = rouge_l("a x b y c".split(), "a b c".split())
    assert (s.precision, s.recall) == (pytest.approx(3 / 5), 1.0)


def test_empty_and_disjoint_texts_score_zero():
    for hyp, ref in [("", "a b"), ("a b", ""), ("x y", "a b"), ("!!", "a")]:
        assert all(v.fmeasure == 0.0 for v in rouge_scores(hyp, ref).values())


def test_several_references_take_the_best_one():
    s = rouge_scores("red circle left of square", ["blue star", "red circle left of blue square"])
    assert s["rouge1"].fmeasure == pytest.approx(f1(1.0, 5 / 6))


def test_corpus_rouge_is_the_mean_of_sentence_f1():
    out = corpus_rouge(["a b c", "x"], ["a b c", "y"])
    assert out["rouge1"] == pytest.approx(0.5) and out["rougeL"] == pytest.approx(0.5)
    assert out["rouge2"] == pytest.approx(0.5)  # 1.0 and 0.0
    assert out["rouge1_recall"] == pytest.approx(0.5)
    assert corpus_rouge([], []) == {}
    with pytest.raises(ValueError):
        corpus_rouge(["a"], [])
