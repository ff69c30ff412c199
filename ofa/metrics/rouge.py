"""ROUGE-1, ROUGE-2 and ROUGE-L in pure Python (the Gigaword metric, docs/tasks.md 2.7).

Follows Google's ``rouge_score`` package with ``use_stemmer=True``, which the official evaluation calls
through HF ``datasets``:

- tokenisation: lowercase, every run of characters other than ``a-z0-9`` is a separator (so
  punctuation, non-ASCII letters and Gigaword's ``#`` digit placeholders vanish), then NLTK's Porter
  stemmer on tokens longer than 3 characters (``stemmed_tokenize``, the default; ``tokenize`` without);
- ROUGE-N: clipped n-gram overlap ``m``; precision ``m / #hyp n-grams``, recall ``m / #ref n-grams``;
- ROUGE-L: sentence-level longest common subsequence ``l``; precision ``l / |hyp|``, recall ``l / |ref|``;
- F1 = ``2 P R / (P + R)`` (0 when both are 0); an empty hypothesis or reference scores 0.

Per sentence the scores equal ``rouge_score``'s (tests/test_rouge.py checks them against the package
when it is installed). The corpus score is the plain mean of the per-sentence F1 values, not the mid
point of ``rouge_score``'s bootstrap (they agree up to sampling noise). Scores are fractions in [0, 1].
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

_TOKEN_RE = re.compile(r"[a-z0-9]+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Score(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


def tokenize(text: str) -> List[str]:
    """Lowercased runs of ``a-z0-9``: ``"U.S. wins, 2-1!"`` -> ``["u", "s", "wins", "2", "1"]``."""
    return _TOKEN_RE.findall(text.lower())


@lru_cache(maxsize=1)
def _porter():
    from nltk.stem.porter import PorterStemmer  # NLTK's default mode, as rouge_score uses it

    return PorterStemmer()


def stemmed_tokenize(text: str) -> List[str]:
    """``tokenize``, then Porter stems of the tokens longer than 3 characters (``rouge_score``'s rule):
    ``"Police killed gunmen"`` -> ``["polic", "kill", "gunmen"]``."""
    stem = _porter().stem
    return [t for t in (stem(w) if len(w) > 3 else w for w in tokenize(text)) if _TOKEN_RE.fullmatch(t)]


def _score(match: int, hyp_total: int, ref_total: int) -> Score:
    p = match / hyp_total if hyp_total > 0 else 0.0
    r = match / ref_total if ref_total > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return Score(p, r, f)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> Score:
    """ROUGE-N of token lists."""
    h, r = _ngrams(hyp, n), _ngrams(ref, n)
    match = sum(min(c, r[g]) for g, c in h.items())
    return _score(match, sum(h.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> Score:
    """Sentence-level ROUGE-L of token lists."""
    return _score(lcs_length(hyp, ref), len(hyp), len(ref))


def rouge_scores(hypothesis: str, reference: Union[str, Sequence[str]],
                 tokenize: Callable[[str], List[str]] = stemmed_tokenize) -> Dict[str, Score]:
    """``{"rouge1", "rouge2", "rougeL"} -> Score`` of one hypothesis.

    With several references, each type takes the reference of highest F1 (``rouge_score``'s
    ``score_multi``). ``tokenize``: ``stemmed_tokenize`` (the official metric) or ``tokenize``.
    """
    refs = [reference] if isinstance(reference, str) else list(reference)
    hyp = tokenize(hypothesis)
    best: Dict[str, Score] = {k: Score(0.0, 0.0, 0.0) for k in ROUGE_TYPES}
    for ref_text in refs:
        ref = tokenize(ref_text)
        for key, score in (("rouge1", rouge_n(hyp, ref, 1)), ("rouge2", rouge_n(hyp, ref, 2)),
                           ("rougeL", rouge_l(hyp, ref))):
            if score.fmeasure > best[key].fmeasure:
                best[key] = score
    return best


def corpus_rouge(hypotheses: Sequence[str], references: Sequence[Union[str, Sequence[str]]],
                 tokenize: Optional[Callable[[str], List[str]]] = None) -> Dict[str, float]:
    """Mean F1 (``rouge1``, ``rouge2``, ``rougeL``) and mean recall (``*_recall``) over sentence pairs."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return {}
    kwargs = {"tokenize": tokenize} if tokenize is not None else {}
    sums = {k: 0.0 for k in ROUGE_TYPES}
    recalls = {k: 0.0 for k in ROUGE_TYPES}
    for hyp, ref in zip(hypotheses, references):
        for key, score in rouge_scores(hyp, ref, **kwargs).items():
            sums[key] += score.fmeasure
            recalls[key] += score.recall
    n = len(hypotheses)
    out = {k: v / n for k, v in sums.items()}
    out.update({f"{k}_recall": v / n for k, v in recalls.items()})
    return out
