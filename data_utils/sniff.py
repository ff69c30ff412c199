"""Which official layout a TSV row looks like, from its fields alone (for "this file looks like a refcoco
TSV" messages when a file is given to the wrong task).

Only shapes are used: the column count, then a field that marks the layout (four numbers for a box,
``conf|!+answer`` items, an entailment label, a class index, image codes). A guess, never a check: the
full checks are ``ofa.data_utils.validate``'s.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence

from ofa.data_utils.formats import SCHEMAS

_NUMBER = r"-?\d+(?:\.\d+)?"
_BOX = re.compile(rf"^\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*$")
_CODES = re.compile(r"^\s*(?:<code_\d+>|\d+)(?:\s+(?:<code_\d+>|\d+))+\s*$")
_SNLI = {"entailment", "neutral", "contradiction"}

# schema name -> does a row of that many fields carry the layout's mark
_MARKS: Dict[str, Callable[[Sequence[str]], bool]] = {
    "refcoco": lambda f: bool(_BOX.match(f[3])),
    "caption": lambda f: not _BOX.match(f[3]),
    "vqa": lambda f: "|!+" in f[3],
    "snli_ve": lambda f: f[5].strip() in _SNLI,
    "image_classify": lambda f: f[1].strip().isdigit(),
    "image_gen": lambda f: bool(_CODES.match(f[1])),
    "text_pair": lambda f: not _CODES.match(f[1]) and not f[1].strip().isdigit(),
    "pretrain_vl": lambda f: True,
    "pretrain_text": lambda f: True,
    "pretrain_image": lambda f: bool(_CODES.match(f[2])),
    "pretrain_detection": lambda f: not _CODES.match(f[2]),
    "detection": lambda f: not _CODES.match(f[2]),
    "region_caption": lambda f: bool(_BOX.match(f[3])),
}


def guess_schemas(fields: Sequence[str]) -> List[str]:
    """Names of the official layouts a row of ``fields`` (a TSV line split on tabs) looks like, best first;
    empty when none fits."""
    out = []
    for name, mark in _MARKS.items():
        schema = SCHEMAS[name]
        if len(schema.columns) == len(fields):
            try:
                if mark(fields):
                    out.append(name)
            except IndexError:  # pragma: no cover - guarded by the column count
                continue
    return out


def first_row(path: str, separator: str = "\t") -> Optional[List[str]]:
    """The fields of the first non-blank line of a TSV file (bytes that are not UTF-8 replaced), ``None``
    for an empty file."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return line.decode("utf-8", errors="replace").rstrip("\r\n").split(separator)
    return None


def layout_mismatch(path: str, schema_name: str, task_name: str) -> Optional[str]:
    """A one-line explanation when the first row of the TSV ``path`` does not have the layout of
    ``schema_name`` (the task's) but looks like another, else ``None``."""
    if path.endswith((".h5", ".hdf5")) or schema_name not in SCHEMAS:
        return None
    fields = first_row(path)
    expected = SCHEMAS[schema_name]
    if fields is None:
        return None
    guesses = guess_schemas(fields)
    if len(fields) == len(expected.columns) and (schema_name in guesses or not guesses):
        return None
    guesses = [g for g in guesses if g != schema_name]
    looks = f"looks like a {guesses[0]} TSV ({len(fields)} columns)" if guesses else f"has {len(fields)} columns"
    return (f"{path} {looks}; the checkpoint is {task_name}, whose {schema_name} TSV has "
            f"{len(expected.columns)} columns ({', '.join(expected.columns)})")
