"""Shared pieces of the converters: text cleaning, image loading with skip-or-fail, small file helpers."""
from __future__ import annotations

import base64
import json
import os
import pickle
import re
import string
from collections import OrderedDict
from typing import Any, Dict, Iterable, Mapping, Optional

from ofa.data_utils.errors import DataError
from ofa.data_utils.images import decode_bytes
from ofa.io_utils import write_atomic

# every character that ``str.splitlines`` treats as a line break, plus the tab: none may reach a TSV field
_BREAKS = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SPACES = re.compile(r" {2,}")
_PUNCT = str.maketrans({c: None for c in string.punctuation})  # the official caption dataset's table


def clean_text(value: Any) -> str:
    """Tabs and line breaks -> spaces (the TSV cannot hold them); runs of spaces collapsed; stripped."""
    return _SPACES.sub(" ", _BREAKS.sub(" ", str(value))).strip()


def caption_text(value: Any) -> str:
    """A caption as the official files hold it: cleaned, lowercase, with all punctuation removed."""
    return _SPACES.sub(" ", clean_text(value).translate(_PUNCT).lower()).strip()


def format_number(value: float) -> str:
    """``12.0`` -> ``12``, ``238.15000000000003`` -> ``238.15`` (rounded to 4 decimals)."""
    text = repr(round(float(value), 4))
    return text[:-2] if text.endswith(".0") else text


def require(record: Any, key: str, path: str, row: int) -> Any:
    if not isinstance(record, Mapping):
        raise DataError(f"record is a {type(record).__name__}, expected a JSON object", path, row)
    if key not in record or record[key] is None:
        raise DataError(f"record lacks {key!r}", path, row, key)
    return record[key]


def load_json(path: str, what: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} file does not exist", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file cannot be read ({e})", path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{what} file is not valid JSON ({e})", path) from None


def json_list(data: Any, key: str, path: str) -> list:
    """``data[key]`` as a list, or a ``DataError`` naming the file and the key."""
    if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
        raise DataError(f"expected a JSON object with a list under {key!r}", path, field=key)
    return data[key]


def write_mapping(path: str, mapping: Dict[str, int]) -> Dict[str, str]:
    """Write ``mapping`` as a pickle (``<stem>.pkl``) and as JSON (``<stem>.json``); ``path`` gives the stem.

    Returns the two paths written, keyed by ``"pickle"`` and ``"json"``.
    """
    stem, ext = os.path.splitext(path)
    if ext.lower() not in (".pkl", ".pickle", ".p", ".json"):
        stem = path
    pkl_path = path if ext.lower() in (".pkl", ".pickle", ".p") else stem + ".pkl"
    json_path = path if ext.lower() == ".json" else stem + ".json"
    plain = {str(k): int(v) for k, v in mapping.items()}
    write_atomic(pkl_path, pickle.dumps(plain, protocol=4))
    write_atomic(json_path, json.dumps(plain, ensure_ascii=False, indent=0) + "\n")
    return {"pickle": pkl_path, "json": json_path}


class ConvertResult(int):
    """The number of rows written (an ``int``), with the skip counts attached."""

    out: str
    skipped_rows: int
    bad_images: int

    def __new__(cls, rows: int, out: str, skipped_rows: int = 0, bad_images: int = 0, extra_files=()):
        obj = super().__new__(cls, rows)
        obj.out, obj.skipped_rows, obj.bad_images = out, skipped_rows, bad_images
        obj.extra_files = tuple(extra_files)
        return obj


class ImageReader:
    """Reads image files under ``root`` as base64 of their original bytes, with skip-or-fail handling.

    ``load`` returns the base64 text, or ``None`` when the image is missing/corrupt and ``skip_bad`` is set
    (the caller then drops the row; ``skipped_rows`` counts them). Without ``skip_bad`` a bad image raises
    ``DataError`` naming the source file, the record and the image path. With ``verify`` (default) the bytes
    must decode as an image (the strict check the TSV readers apply); the written bytes are never re-encoded.
    """

    def __init__(self, root: str, skip_bad: bool = False, verify: bool = True, cache_size: int = 16):
        if not os.path.isdir(root):
            raise DataError("image folder does not exist or is not a folder", root)
        self.root, self.skip_bad, self.verify = root, skip_bad, verify
        self.skipped_rows = 0
        self.bad: Dict[str, str] = {}  # path -> reason
        self._cache: "OrderedDict[str, str]" = OrderedDict()
        self._cache_size = cache_size

    def path(self, name: str, src: Optional[str] = None, row: Optional[int] = None, field: str = "image") -> str:
        """``root/name``; refuses absolute names and names that climb out of the image folder."""
        rel = os.path.normpath(str(name))
        if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
            raise DataError(f"image name {name!r} points outside the image folder {self.root}", src, row, field)
        return os.path.join(self.root, rel)

    def first_existing(self, names: Iterable[str], src: Optional[str] = None, row: Optional[int] = None) -> str:
        """The first candidate name that exists under ``root`` (or the first candidate, to be reported missing)."""
        paths = [self.path(n, src, row) for n in names]
        for p in paths:
            if os.path.isfile(p):
                return p
        return paths[0]

    def _read(self, path: str) -> str:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise DataError("is missing") from None
        except OSError as e:
            raise DataError(f"cannot be read ({type(e).__name__}: {e.strerror or e})") from None
        if not raw:
            raise DataError("is empty")
        if self.verify:
            try:
                decode_bytes(raw)
            except DataError as e:
                raise DataError(f"is corrupt: {e.message}") from None
        return base64.b64encode(raw).decode("ascii")

    def load(self, path: str, record: str, src: Optional[str], row: Optional[int]) -> Optional[str]:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        reason = self.bad.get(path)
        if reason is None:
            try:
                data = self._read(path)
            except DataError as e:
                reason = self.bad[path] = e.message
            else:
                self._cache[path] = data
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                return data
        if self.skip_bad:
            self.skipped_rows += 1
            return None
        raise DataError(f"{record}: image {path} {reason} (use --skip-bad to skip such records)", src, row, "image")

    def result(self, rows: int, out: str, extra_files=()) -> ConvertResult:
        return ConvertResult(rows, out, self.skipped_rows, len(self.bad), extra_files)


def add_common_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="OUT.tsv", help="the TSV file to write (atomically)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip records whose image is missing or corrupt (and count them) instead of failing")
    parser.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                        help="only check that image files exist and are non-empty (faster; no decode check)")
