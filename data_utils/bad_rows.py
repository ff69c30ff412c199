"""The bad rows a dataset skipped under ``--bad-rows skip``: each one counted once.

A row is known by its file and 0-based global row number, so a row read again (a later epoch, the
CIDEr document-frequency pass, fairseq's look at the first batch) is not counted again. Rows that a
rank reads only to even out the ranks (``reader.is_padding``) belong to another rank and are left to
it, so the per-rank counts of a distributed run add up to the file's count.

DataLoader workers hold copies of the dataset: what a worker finds reaches the main process through
``take_fresh`` (rows found since the last call, sent along with each batch) and ``merge``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set, Tuple

BadRow = Tuple[str, int]  # (file, 0-based global row)


class SkippedRows:
    """The distinct bad rows met so far, in the order they were first met."""

    def __init__(self):
        self._seen: Set[BadRow] = set()
        self._order: List[BadRow] = []
        self._fresh: List[BadRow] = []

    def add(self, path: str, row: int) -> bool:
        """Record row ``row`` of ``path``; False when it was already known."""
        key = (str(path), int(row))
        if key in self._seen:
            return False
        self._seen.add(key)
        self._order.append(key)
        self._fresh.append(key)
        return True

    def take_fresh(self) -> List[BadRow]:
        """The rows recorded since the last call (a loader worker sends them with its batch)."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def merge(self, rows: Iterable[BadRow]) -> None:
        """Add rows found by a copy of this log (a loader worker's)."""
        for path, row in rows:
            self.add(path, row)
        self._fresh = []  # already known where they came from

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: BadRow) -> bool:
        return (str(key[0]), int(key[1])) in self._seen

    def by_file(self) -> Dict[str, int]:
        """``{file: distinct bad rows}``, files in the order their first bad row was met."""
        counts: Dict[str, int] = {}
        for path, _ in self._order:
            counts[path] = counts.get(path, 0) + 1
        return counts


def describe(counts: Dict[str, int]) -> str:
    """``{"a.tsv": 2, "b.tsv": 1}`` -> ``"skipped 2 bad rows of a.tsv, 1 of b.tsv"`` (``""`` when none)."""
    parts = [(path, n) for path, n in counts.items() if n]
    if not parts:
        return ""
    (path, n), rest = parts[0], parts[1:]
    first = f"skipped {n} bad row{'s' if n != 1 else ''} of {path}"
    return ", ".join([first] + [f"{m} of {p}" for p, m in rest])


def add_counts(*counts: Dict[str, int]) -> Dict[str, int]:
    """Per-file counts of several ranks added up (files in first-seen order)."""
    out: Dict[str, int] = {}
    for c in counts:
        for path, n in c.items():
            out[path] = out.get(path, 0) + int(n)
    return out
