"""Corpus BLEU from summable per-sentence statistics (the pycocoevalcap convention).

``bleu_stats(hypothesis, references)`` returns clipped n-gram matches and totals for n = 1..4 plus the
hypothesis length and the closest reference length; sums of these over any set of sentences (and
over distributed workers) give the corpus score with ``corpus_bleu``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Sequence


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu_stats(hypothesis: str, references: Sequence[str], max_n: int = 4) -> Dict[str, float]:
    hyp = hypothesis.split()
    refs = [r.split() for r in references]
    stats: Dict[str, float] = {"sys_len": len(hyp)}
    # closest reference length, ties broken towards the shorter one
    stats["ref_len"] = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1] if refs else 0
    for n in range(1, max_n + 1):
        h = _ngrams(hyp, n)
        best: Counter = Counter()
        for r in refs:
            best |= _ngrams(r, n)
        stats[f"match_{n}"] = sum(min(c, best[g]) for g, c in h.items())
        stats[f"total_{n}"] = max(len(hyp) - n + 1, 0)
    return stats


def corpus_bleu(stats: Dict[str, float], max_n: int = 4) -> float:
    """BLEU-``max_n`` in [0, 1] from summed statistics."""
    if stats.get("sys_len", 0) == 0:
        return 0.0
    logs: List[float] = []
    for n in range(1, max_n + 1):
        m, t = stats.get(f"match_{n}", 0), stats.get(f"total_{n}", 0)
        if m == 0 or t == 0:
            return 0.0
        logs.append(math.log(m / t))
    bp = 1.0 if stats["sys_len"] > stats["ref_len"] else math.exp(1 - stats["ref_len"] / stats["sys_len"])
    return bp * math.exp(sum(logs) / max_n)
