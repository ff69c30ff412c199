"""CIDEr-D in pure Python (Vedantam et al. 2015), as the official ``utils/cider/pyciderevalcap/ciderD``.

For a hypothesis ``h`` and the references ``R`` of one image::

    g_n(s)[w] = count_s(w) * (log(ref_len) - log(max(1, df[w])))     tf-idf of the n-gram w, n = 1..4
    sim_n(h, r) = sum_w min(g_n(h)[w], g_n(r)[w]) * g_n(r)[w] / (|g_n(h)| |g_n(r)|)   (clipped cosine)
                  * exp(-(len(h) - len(r))^2 / (2 sigma^2))                            (length penalty)
    CIDEr-D(h, R) = 10 * mean_n( sum_{r in R} sim_n(h, r) ) / |R|

``df[w]`` is the number of documents (images) whose references contain ``w``; ``ref_len`` is the
number of documents (the official pickle stores that count; the logarithm is taken here). Without a
given ``df`` ("corpus" mode), both come from the references being scored. Two official details are
kept so that scores match: the length in the penalty counts *bigrams* (``len(words) - 1``), and a
norm of zero leaves the similarity un-normalised (it is then 0).

Document frequencies are stored as the official ``coco-*-words.p`` pickles:
``{"document_frequency": {ngram tuple: count}, "ref_len": number of documents}``.
"""
from __future__ import annotations

import math
import pickle
import string
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Ngram = Tuple[str, ...]
DocumentFrequency = Dict[Ngram, float]


_PUNCT = str.maketrans({c: None for c in string.punctuation})


def normalize_for_reward(text: str) -> str:
    """A caption as the SCST reward and its cached document frequencies see it (official
    ``_wrap_sentence(s.strip().translate(no_punct))``): ``"A dog, running." -> "A dog running <eos>"``."""
    r = text.strip().translate(_PUNCT).strip()
    if r.endswith("."):
        r = r[:-1]
    return r + " <eos>"


def ngram_counts(sentence: str, n: int = 4) -> Dict[Ngram, int]:
    """Counts of all 1..``n``-grams of the whitespace-split ``sentence`` (official ``precook``)."""
    words = sentence.split()
    counts: Dict[Ngram, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def build_document_frequency(refs: Iterable[Sequence[str]], n: int = 4) -> Tuple[DocumentFrequency, float]:
    """Document frequencies of the n-grams in ``refs`` (one list of reference sentences per document).

    Returns:
        ``(df, ref_len)``: ``df[ngram]`` = number of documents with ``ngram`` in any of their references;
        ``ref_len`` = the number of documents, as stored in the official pickle.
    """
    df: DocumentFrequency = defaultdict(float)
    num_docs = 0
    for doc in refs:
        num_docs += 1
        for ngram in {g for sentence in doc for g in ngram_counts(sentence, n)}:
            df[ngram] += 1
    return dict(df), float(num_docs)


def save_document_frequency(path: Union[str, Path], df: Mapping[Ngram, float], ref_len: float) -> None:
    """Write ``df`` and ``ref_len`` (number of documents) in the official pickle layout."""
    with open(path, "wb") as f:
        pickle.dump({"document_frequency": dict(df), "ref_len": float(ref_len)}, f, protocol=2)


class _DFUnpickler(pickle.Unpickler):
    """Unpickles only plain containers: the official files hold a dict of n-gram tuples -> counts
    (possibly a ``defaultdict`` and numpy scalars, written by Python 2)."""

    ALLOWED = {
        ("collections", "defaultdict"), ("builtins", "float"), ("builtins", "int"), ("__builtin__", "float"),
        ("__builtin__", "int"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"), ("_codecs", "encode"),  # numpy scalars under protocol 2 carry their bytes this way
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a document-frequency pickle")
        return super().find_class(module, name)


def load_document_frequency(path: Union[str, Path]) -> Tuple[DocumentFrequency, float]:
    """Read an official ``coco-*-words.p`` (or ``save_document_frequency``) pickle.

    Returns:
        ``(df, ref_len)`` with ``ref_len`` the number of documents.
    """
    with open(path, "rb") as f:
        data = _DFUnpickler(f, encoding="latin1").load()
    if not isinstance(data, dict) or "document_frequency" not in data or "ref_len" not in data:
        raise ValueError(f"{path}: expected a dict with 'document_frequency' and 'ref_len'")
    return {tuple(k): float(v) for k, v in data["document_frequency"].items()}, float(data["ref_len"])


class CiderD:
    """CIDEr-D scorer (official ``CiderD``: n=4, sigma=6, clipped, x10).

    Args:
        n: largest n-gram order.
        sigma: standard deviation of the Gaussian length penalty.
        df: document frequencies ``{ngram tuple: count}``, a path to an official pickle, or ``None`` for
            "corpus" mode (frequencies of the references passed to each ``compute_score`` call).
        ref_len: the number of documents behind ``df`` (required with a dict ``df``; read from the
            pickle with a path). Its logarithm is the idf numerator.
    """

    def __init__(self, n: int = 4, sigma: float = 6.0, df: Union[None, str, Path, Mapping[Ngram, float]] = None,
                 ref_len: Optional[float] = None):
        self.n = n
        self.sigma = sigma
        if isinstance(df, (str, Path)):
            df, ref_len = load_document_frequency(df)
        if df is not None and ref_len is None:
            raise ValueError("CiderD(df=...) needs ref_len, the number of documents the frequencies count")
        self.df = df
        self.ref_len = None if ref_len is None else float(ref_len)

    def method(self) -> str:
        return "CIDEr-D"

    def _vector(self, counts: Mapping[Ngram, int], df: Mapping[Ngram, float], log_ref_len: float):
        vec: List[Dict[Ngram, float]] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            value = float(tf) * (log_ref_len - math.log(max(1.0, df.get(ngram, 0.0))))
            vec[k][ngram] = value
            norm[k] += value * value
            if k == 1:  # official quirk: the "length" is the number of bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _sim(self, hyp, ref) -> np.ndarray:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma ** 2))
        val = np.zeros(self.n)
        for k in range(self.n):
            dot = sum(min(v, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, v in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                dot /= nh[k] * nr[k]
            val[k] = dot * penalty
        return val

    def score_one(self, hypothesis: str, references: Sequence[str], df: Mapping[Ngram, float],
                  log_ref_len: float, _ref_vectors: Optional[list] = None) -> float:
        """CIDEr-D of one hypothesis against its references under the given idf."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference per hypothesis")
        hyp = self._vector(ngram_counts(hypothesis, self.n), df, log_ref_len)
        if _ref_vectors is None:
            _ref_vectors = [self._vector(ngram_counts(r, self.n), df, log_ref_len) for r in references]
        total = np.zeros(self.n)
        for ref in _ref_vectors:
            total += self._sim(hyp, ref)
        return float(np.mean(total) / len(references) * 10.0)

    def compute_score(self, gts: Mapping, res: Mapping) -> Tuple[float, np.ndarray]:
        """Score every hypothesis.

        Args:
            gts: id -> list of reference sentences.
            res: id -> list holding exactly one hypothesis sentence (the official layout).

        Returns:
            ``(mean score, scores [len(res)])`` in the iteration order of ``res``.
        """
        hyps = []
        for key, hyp in res.items():
            if isinstance(hyp, str):
                hyp = [hyp]
            if len(hyp) != 1:
                raise ValueError(f"res[{key!r}] must hold exactly one hypothesis, got {len(hyp)}")
            if key not in gts:
                raise KeyError(f"no references for id {key!r}")
            hyps.append((hyp[0], list(gts[key])))
        if self.df is None:  # corpus mode: one document per scored id, as the official scorer
            df, ref_len = build_document_frequency((refs for _, refs in hyps), self.n)
        else:
            df, ref_len = self.df, self.ref_len
        log_ref_len = math.log(ref_len) if ref_len > 0 else 0.0
        ref_vectors: Dict[Tuple[str, ...], list] = {}  # several hypotheses often share references (SCST)
        scores = np.zeros(len(hyps), dtype=np.float64)
        for i, (h, refs) in enumerate(hyps):
            key = tuple(refs)
            if key not in ref_vectors:
                ref_vectors[key] = [self._vector(ngram_counts(r, self.n), df, log_ref_len) for r in refs]
            scores[i] = self.score_one(h, refs, df, log_ref_len, ref_vectors[key])
        return (float(scores.mean()) if len(scores) else 0.0), scores
