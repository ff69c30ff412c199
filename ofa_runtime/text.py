"""The export's tokenizer and image preprocessing without torch or fairseq: the same ids and pixels as
``ofa.tokenizer`` and the evaluation transform of ``ofa.data_utils.transforms``.

- ``Tokenizer(export_dir)``: ``dict.txt`` (fairseq layout: ``<s> <pad> </s> <unk>``, the file's symbols,
  then ``<mask>``, the ``<code_i>`` and ``<bin_i>`` tokens) with the official GPT-2 byte-level BPE
  (``encoder.json`` + ``vocab.bpe``; needs the ``regex`` package) or a SentencePiece model (``spm.model``;
  needs ``sentencepiece``). ``<bin_i>``, ``<code_i>`` and ``<mask>`` in a text are looked up directly.
- ``preprocess_image(image, size, mean, std)``: RGB, a bicubic resize to ``size x size`` (aspect ratio not
  kept), ``[0, 1]`` then ``(x - mean) / std`` per channel (the export's ``image_mean`` / ``image_std``, 0.5 in
  every released model): float32 ``[3, size, size]``.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np

SPECIAL_RE = re.compile(r"(<bin_\d+>|<code_\d+>|<mask>)")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@lru_cache(maxsize=1)
def _byte_table() -> Dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def read_fairseq_dict(path: str) -> List[str]:
    """The symbols of a fairseq ``dict.txt`` in order (``symbol count`` per line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            field, _, count = line.rpartition(" ")
            if count == "#fairseq:overwrite":
                field, _, count = field.rpartition(" ")
            if not field or not count.lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'symbol count', got {line!r}")
            out.append(field)
    return out


class _GPT2BPE:
    def __init__(self, encoder_json: str, vocab_bpe: str):
        import regex

        with open(encoder_json, encoding="utf-8") as f:
            self.encoder: Dict[str, int] = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(vocab_bpe, encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
        self.ranks: Dict[Tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = _byte_table()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache: Dict[str, str] = {}

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> List[str]:
        ids = []
        for token in self.pattern.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(str(self.encoder[t]) for t in self._bpe(token).split(" "))
        return ids

    def decode(self, symbols: Sequence[str]) -> str:
        text = "".join(self.decoder.get(int(s), "") for s in symbols if s.isdigit())
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


class _SentencePiece:
    def __init__(self, model: str):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=model)

    def encode(self, text: str) -> List[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, symbols: Sequence[str]) -> str:
        return self.sp.decode_pieces(list(symbols))


class Tokenizer:
    """Text <-> ids with the tokenizer files of an export folder (or any tokenizer folder).

    Args:
        folder: holds ``dict.txt`` and ``encoder.json`` + ``vocab.bpe`` or ``spm.model``.
        code_dict_size, num_bins: the ``<code_i>`` and ``<bin_i>`` tokens appended after ``<mask>``.
    """

    def __init__(self, folder: str, code_dict_size: int = 8192, num_bins: int = 1000):
        symbols = list(FAIRSEQ_SPECIALS)
        seen = set(symbols)
        extra = ["<mask>"] + [f"<code_{i}>" for i in range(code_dict_size)] + [f"<bin_{i}>" for i in range(num_bins)]
        for s in read_fairseq_dict(os.path.join(folder, "dict.txt")) + extra:
            if s not in seen:  # fairseq's add_symbol keeps the first entry of a repeated symbol
                seen.add(s)
                symbols.append(s)
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}
        self.bos, self.pad, self.eos, self.unk = 0, 1, 2, 3
        if os.path.isfile(os.path.join(folder, "spm.model")):
            self.model = _SentencePiece(os.path.join(folder, "spm.model"))
        else:
            self.model = _GPT2BPE(os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe"))

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> List[int]:
        """Text -> ids (no BOS/EOS), special tokens looked up directly (``ofa.tokenizer``'s rules)."""
        ids: List[int] = []
        parts = SPECIAL_RE.split(text)
        for i, part in enumerate(parts):
            if i % 2 == 1:
                ids.append(self.index.get(part, self.unk))
                continue
            if i + 1 < len(parts):
                part = part.rstrip()
            if i > 0 and not part.strip():
                continue
            if part:
                ids.extend(self.index.get(s, self.unk) for s in self.model.encode(part))
        return ids

    def encode_line(self, text: str) -> np.ndarray:
        """``[bos] + encode(text) + [eos]`` as int64, the layout of an encoder source."""
        return np.array([self.bos, *self.encode(text), self.eos], dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; BOS/EOS/PAD dropped, ``<bin_i>`` / ``<code_i>`` kept as they are."""
        out: List[str] = []
        run: List[str] = []
        for i in (int(v) for v in ids):
            if i in (self.bos, self.eos, self.pad):
                continue
            sym = self.symbols[i]
            if SPECIAL_RE.fullmatch(sym) or i < len(FAIRSEQ_SPECIALS):
                if run:
                    out.append(self.model.decode(run))
                    run = []
                out.append(sym)
            else:
                run.append(sym)
        if run:
            out.append(self.model.decode(run))
        return " ".join(s.strip() for s in out if s.strip()) if len(out) > 1 else (out[0] if out else "")

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        """Encoder sources of several texts, right-padded: int64 ``[B, L]``."""
        lines = [self.encode_line(t) for t in texts]
        out = np.full((len(lines), max(len(x) for x in lines)), self.pad, dtype=np.int64)
        for row, line in zip(out, lines):
            row[:len(line)] = line
        return out


def preprocess_image(image, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                     std: Sequence[float] = (0.5, 0.5, 0.5)) -> np.ndarray:
    """A file path or PIL image -> float32 ``[3, size, size]``, normalised per channel (the evaluation transform)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.open(image)
    img = img.convert("RGB").resize((size, size), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / np.float32(255)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1).copy()
