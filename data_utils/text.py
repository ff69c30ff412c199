"""Text normalisation of the official datasets (``pre_caption`` / ``pre_question``)."""
from __future__ import annotations

import re
import string

_PUNCT = str.maketrans({c: "" for c in string.punctuation})


def _clean(text: str) -> str:
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    return re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")


def pre_caption(text: str, max_words: int) -> str:
    """Lowercase, strip leading punctuation, ``-``/``/`` -> space, ``<person>`` -> person, cut to words."""
    text = _clean(text.replace("<person>", "person"))
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_question(text: str, max_words: int) -> str:
    """Like ``pre_caption`` without the ``<person>`` rule."""
    text = _clean(text)
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def strip_punctuation(text: str) -> str:
    """Remove ASCII punctuation and collapse spaces (caption targets and predictions)."""
    return " ".join(text.translate(_PUNCT).split())
