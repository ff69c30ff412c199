"""ROUGE-1/2/L (ofa/metrics/rouge.py) on hand-computed cases."""
import pytest

from ofa.metrics.rouge import corpus_rouge, lcs_length, rouge_l, rouge_n, rouge_scores, stemmed_tokenize, tokenize


def f1(p, r):
    return 2 * p * r / (p + r)


def test_tokenize_lowercases_and_splits_on_punctuation():
    assert tokenize("U.S. wins, 2-1!") == ["u", "s", "wins", "2", "1"]
    assert tokenize("police kill # gunmen") == ["police", "kill", "gunmen"]  # Gigaword's '#' digits vanish
    assert tokenize("  ") == []
    assert tokenize("café noël") == ["caf", "no", "l"]  # like rouge_score: only a-z0-9 make tokens


def test_stemming_matches_inflections_of_words_longer_than_three_letters():
    assert stemmed_tokenize("Police killed the gunmen running") == ["polic", "kill", "the", "gunmen", "run"]
    assert stemmed_tokenize("was has") == ["was", "has"]  # 3 letters or fewer stay as they are
    ref = "police killed the gunman"
    assert rouge_scores("police kill the gunman", ref)["rouge1"].fmeasure == 1.0     # the default: stemmed
    assert rouge_scores("police kill the gunman", ref, tokenize=tokenize)["rouge1"].fmeasure == pytest.approx(3 / 4)


def test_sentence_scores_equal_the_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")  # in the [test] extras
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = [("police killed the gunman in a shootout", "Police kill gunmen after shooting"),
             ("u.s. stocks rise ## points on earnings", "US stocks rose 12 points, earnings beat"),
             ("the cats are running faster than dogs", "a cat runs fast and the dog is running"),
             ("", "nothing here"), ("identical text here", "identical text here"),
             ("général motors recalls cars", "general motors recall of cars")]
    for hyp, ref in pairs:
        want = scorer.score(ref, hyp)
        got = rouge_scores(hyp, ref)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert got[key].precision == pytest.approx(want[key].precision), (hyp, key)
            assert got[key].recall == pytest.approx(want[key].recall), (hyp, key)
            assert got[key].fmeasure == pytest.approx(want[key].fmeasure), (hyp, key)


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
    a, b = (rouge_scores(h, ref, tokenize=tokenize) for h in ("police kill the gunman", "the gunman kill police"))
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
