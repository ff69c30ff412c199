"""The unified OFA vocabulary and its two text tokenizers.

Vocabulary layout (``tasks/ofa_task.py::setup_task`` of the official code; architecture.md 2):

    0 <s>, 1 <pad>, 2 </s>, 3 <unk>            fairseq specials
    4 .. 4+n-1                                  text symbols from ``dict.txt``
    then <mask>, <code_0>..<code_{C-1}>, <bin_0>..<bin_{B-1}>

With the official GPT-2 ``dict.txt`` (n = 50260), C = 8192 and B = 1000 this gives ``<mask>`` = 50264,
codes 50265..58456, bins 58457..59456, 59457 entries. Offsets are always derived from the dictionary
length (``Vocab``), never hard-coded.

Two tokenizers share one interface (``encode(text) -> LongTensor`` without BOS/EOS,
``decode(ids) -> str``, ``.dictionary``):

- ``GPT2Tokenizer``: the official GPT-2 byte-level BPE (``encoder.json``, ``vocab.bpe``, ``dict.txt``
  in a ``--bpe-dir``). Ids equal the official ones.
- ``SentencePieceTokenizer``: for users without the GPT-2 files; a SentencePiece model trained by
  ``ofa-tokenizer train`` on a text corpus, with the same special, code and bin tokens appended.

``<bin_i>``, ``<code_i>`` and ``<mask>`` inside a string pass through unsplit, as the official
``encode_text(..., use_bpe=False)`` does for location strings.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Union

import torch
from fairseq.data import Dictionary

from ofa.errors import ConfigError
from ofa.io_utils import AtomicFile

SPECIAL_RE = re.compile(r"(<bin_\d+>|<code_\d+>|<mask>)")
SPM_MODEL = "spm.model"
SPM_DICT = "dict.txt"
GPT2_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
SPM_FILES = (SPM_MODEL, SPM_DICT)


class BpeDirError(ConfigError, FileNotFoundError):
    """A tokenizer folder (``--bpe-dir``) that does not exist or lacks a file; the message names both."""


def tokenizer_kind(bpe_dir: str, option: str = "bpe_dir") -> str:
    """``"gpt2"`` or ``"sentencepiece"``: which tokenizer ``bpe_dir`` holds, all of its files present.

    Raises:
        BpeDirError: one line naming the folder and what is wrong: ``bpe_dir /x does not exist``,
            ``bpe_dir /x lacks vocab.bpe (GPT-2 BPE needs encoder.json, vocab.bpe, dict.txt)``.
    """
    if not os.path.exists(bpe_dir):
        raise BpeDirError(f"{option} {bpe_dir} does not exist")
    if not os.path.isdir(bpe_dir):
        raise BpeDirError(f"{option} {bpe_dir} is not a folder")

    def lacking(names):
        return [n for n in names if not os.path.isfile(os.path.join(bpe_dir, n))]

    if os.path.isfile(os.path.join(bpe_dir, SPM_MODEL)):
        kind, needs = "sentencepiece", SPM_FILES
    elif any(os.path.isfile(os.path.join(bpe_dir, n)) for n in ("encoder.json", "vocab.bpe")):
        kind, needs = "gpt2", GPT2_FILES
    else:
        raise BpeDirError(
            f"{option} {bpe_dir} holds neither GPT-2 BPE files ({', '.join(GPT2_FILES)}) nor a SentencePiece "
            f"model ({', '.join(SPM_FILES)}): it lacks encoder.json and {SPM_MODEL}; train one with "
            "`ofa-tokenizer train`"
        )
    missing = lacking(needs)
    if missing:
        name = "GPT-2 BPE" if kind == "gpt2" else "a SentencePiece tokenizer"
        raise BpeDirError(f"{option} {bpe_dir} lacks {' and '.join(missing)} ({name} needs {', '.join(needs)})")
    return kind


def build_dictionary(dict_path: str, code_dict_size: int = 8192, num_bins: int = 1000) -> Dictionary:
    """Load a fairseq ``dict.txt`` and append ``<mask>``, the code and the bin tokens."""
    if not os.path.isfile(dict_path):
        raise FileNotFoundError(f"dictionary file not found: {dict_path}")
    d = Dictionary.load(dict_path)
    d.add_symbol("<mask>")
    for i in range(code_dict_size):
        d.add_symbol(f"<code_{i}>")
    for i in range(num_bins):
        d.add_symbol(f"<bin_{i}>")
    return d


@dataclass(frozen=True)
class Vocab:
    """Offsets of the token families, derived from a dictionary's length."""

    size: int
    code_dict_size: int = 8192
    num_bins: int = 1000

    @property
    def bin_start(self) -> int:
        return self.size - self.num_bins

    @property
    def code_start(self) -> int:
        return self.size - self.num_bins - self.code_dict_size

    @property
    def mask(self) -> int:
        return self.code_start - 1

    def bin_token(self, b: Union[int, torch.Tensor]):
        return b + self.bin_start

    def code_token(self, c: Union[int, torch.Tensor]):
        return c + self.code_start

    @classmethod
    def of(cls, dictionary: Dictionary, code_dict_size: int = 8192, num_bins: int = 1000) -> "Vocab":
        v = cls(len(dictionary), code_dict_size, num_bins)
        expected = [(v.mask, "<mask>"), (v.code_start, "<code_0>"), (v.bin_start, "<bin_0>")]
        for idx, sym in expected:
            if dictionary[idx] != sym:
                raise ValueError(f"dictionary entry {idx} is {dictionary[idx]!r}, expected {sym!r}: "
                                 f"not an OFA dictionary with {code_dict_size} codes and {num_bins} bins")
        return v


class _Tokenizer:
    """Shared logic: split out special tokens, encode text segments, map to dictionary ids."""

    dictionary: Dictionary

    def _text_to_symbols(self, text: str) -> List[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _symbols_to_text(self, symbols: List[str]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, text: str) -> torch.LongTensor:
        """Text -> ids ``[n]`` (no BOS/EOS). Special tokens are looked up directly."""
        ids: List[int] = []
        parts = SPECIAL_RE.split(text)
        for i, part in enumerate(parts):
            if i % 2 == 1:
                ids.append(self.dictionary.index(part))
                continue
            if i + 1 < len(parts):  # a special token follows: drop the separating whitespace
                part = part.rstrip()
            if i > 0 and not part.strip():
                continue
            if part:
                ids.extend(self.dictionary.index(s) for s in self._text_to_symbols(part))
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Union[Sequence[int], torch.Tensor], skip_special: bool = True) -> str:
        """Ids -> text; BOS/EOS/PAD are dropped, special tokens are kept as ``<bin_i>`` etc."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        d = self.dictionary
        out: List[str] = []
        run: List[str] = []
        for i in ids:
            if skip_special and i in (d.bos(), d.eos(), d.pad()):
                continue
            sym = d[i]
            if SPECIAL_RE.fullmatch(sym) or i < d.nspecial:
                if run:
                    out.append(self._symbols_to_text(run))
                    run = []
                out.append(sym)
            else:
                run.append(sym)
        if run:
            out.append(self._symbols_to_text(run))
        return " ".join(s.strip() for s in out if s.strip()) if len(out) > 1 else (out[0] if out else "")

    def encode_line(self, text: str, bos: bool = True, eos: bool = True) -> torch.LongTensor:
        """``[bos] + encode(text) + [eos]`` as the OFA datasets pack sources."""
        body = self.encode(text)
        head = [self.dictionary.bos()] if bos else []
        tail = [self.dictionary.eos()] if eos else []
        return torch.cat([torch.tensor(head, dtype=torch.long), body, torch.tensor(tail, dtype=torch.long)])


class GPT2Tokenizer(_Tokenizer):
    """Official GPT-2 byte-level BPE followed by the ``dict.txt`` mapping."""

    kind = "gpt2"

    def __init__(self, bpe_dir: str, code_dict_size: int = 8192, num_bins: int = 1000):
        from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

        files = {n: os.path.join(bpe_dir, n) for n in ("encoder.json", "vocab.bpe", "dict.txt")}
        missing = [p for p in files.values() if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"GPT-2 BPE files missing in {bpe_dir}: {missing}")
        self.bpe = get_encoder(files["encoder.json"], files["vocab.bpe"])
        self.dictionary = build_dictionary(files["dict.txt"], code_dict_size, num_bins)
        self.vocab = Vocab.of(self.dictionary, code_dict_size, num_bins)

    def _text_to_symbols(self, text: str) -> List[str]:
        return [str(t) for t in self.bpe.encode(text)]

    def _symbols_to_text(self, symbols: List[str]) -> str:
        ids = [int(s) for s in symbols if s.isdigit()]
        return self.bpe.decode(ids)


class SentencePieceTokenizer(_Tokenizer):
    """SentencePiece pieces mapped through a fairseq dictionary, with OFA's special tokens appended."""

    kind = "sentencepiece"

    def __init__(self, model_dir: str, code_dict_size: int = 8192, num_bins: int = 1000):
        import sentencepiece as spm

        model = os.path.join(model_dir, SPM_MODEL)
        if not os.path.isfile(model):
            raise FileNotFoundError(f"SentencePiece model not found: {model}")
        self.sp = spm.SentencePieceProcessor(model_file=model)
        self.dictionary = build_dictionary(os.path.join(model_dir, SPM_DICT), code_dict_size, num_bins)
        self.vocab = Vocab.of(self.dictionary, code_dict_size, num_bins)

    def _text_to_symbols(self, text: str) -> List[str]:
        return self.sp.encode(text, out_type=str)

    def _symbols_to_text(self, symbols: List[str]) -> str:
        return self.sp.decode_pieces(symbols)


def load_tokenizer(bpe_dir: str, code_dict_size: int = 8192, num_bins: int = 1000, option: str = "bpe_dir"):
    """Load the tokenizer stored in ``bpe_dir``.

    A directory with ``encoder.json``/``vocab.bpe``/``dict.txt`` gives the official GPT-2 BPE; one
    with ``spm.model``/``dict.txt`` (written by ``ofa-tokenizer train``) gives SentencePiece. A folder
    that does not exist or lacks one of them is a ``BpeDirError`` naming ``option`` (how the caller's user
    gave the folder, e.g. ``--bpe-dir``), the folder and the missing file (``tokenizer_kind``). The code and
    bin counts are checked against ``ofa.config_checks.TASK_LIMITS`` first (each adds one symbol per unit).
    """
    from ofa.config_checks import TASK_LIMITS, check_value

    for name, value in (("code_dict_size", code_dict_size), ("num_bins", num_bins)):  # one symbol each
        check_value(name, value, TASK_LIMITS[name], scope="task config", style="cli")
    if tokenizer_kind(bpe_dir, option) == "gpt2":
        return GPT2Tokenizer(bpe_dir, code_dict_size, num_bins)
    return SentencePieceTokenizer(bpe_dir, code_dict_size, num_bins)


def train_sentencepiece(corpus: Union[str, Iterable[str]], out_dir: str, vocab_size: int = 8000,
                        model_type: str = "unigram", seed_sentencepiece_size: int = 100000) -> str:
    """Train a SentencePiece model and write ``spm.model`` and a fairseq ``dict.txt`` to ``out_dir``.

    Args:
        corpus: a text file (one sentence per line) or an iterable of lines.
        vocab_size: pieces including SentencePiece's own ``<unk>`` and the 256 byte-fallback pieces
            (so that any character is encodable).

    Returns:
        ``out_dir``.
    """
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    kwargs = dict(
        model_prefix=os.path.join(out_dir, "spm"), vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, byte_fallback=True,
        seed_sentencepiece_size=seed_sentencepiece_size, hard_vocab_limit=False,
        # keep OFA's special token strings out of the learned pieces
        user_defined_symbols=[], num_threads=2, minloglevel=2,
    )
    if isinstance(corpus, str):
        spm.SentencePieceTrainer.train(input=corpus, **kwargs)
    else:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(list(corpus)), **kwargs)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, SPM_MODEL))
    with AtomicFile(os.path.join(out_dir, SPM_DICT), "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_unknown(i) or sp.is_control(i):
                continue
            f.write(f"{piece} 1\n")
    return out_dir


def main(argv=None) -> int:
    """``ofa-tokenizer train --corpus FILE --out DIR [--vocab-size N]``; mistakes in one line (``ofa.console``)."""
    from ofa.console import run_cli

    return run_cli("ofa-tokenizer", _main, argv)


def _main(argv) -> None:
    parser = argparse.ArgumentParser(prog="ofa-tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a SentencePiece tokenizer on a text corpus")
    train.add_argument("--corpus", required=True, help="text file, one sentence per line")
    train.add_argument("--out", required=True, help="output directory (spm.model, dict.txt)")
    train.add_argument("--vocab-size", type=int, default=8000)
    train.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    show = sub.add_parser("encode", help="print the ids of a string")
    show.add_argument("--bpe-dir", required=True)
    show.add_argument("text")
    args = parser.parse_args(argv)
    if args.command == "train":
        if not os.path.isfile(args.corpus):
            raise FileNotFoundError(errno.ENOENT, f"corpus not found: {args.corpus}", args.corpus)
        out = train_sentencepiece(args.corpus, args.out, args.vocab_size, args.model_type)
        tok = load_tokenizer(out)
        print(f"wrote {out}: {len(tok.dictionary)} entries ({tok.sp.get_piece_size()} pieces)")
    else:
        tok = load_tokenizer(args.bpe_dir, option="--bpe-dir")
        print(" ".join(map(str, tok.encode(args.text).tolist())))


if __name__ == "__main__":
    sys.exit(main())
