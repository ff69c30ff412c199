"""Datasets of the text-only tasks: Gigaword summarisation, GLUE classification, text infilling.

Every sample has no image: ``example(..., image=None)`` gives a zero image with ``patch_mask=False``,
which the encoder masks out (docs/tasks.md 0, "pure-text" samples).

- ``SummaryDataset`` (``gigaword``; official ``data/nlg_data/summary_dataset.py``, docs/tasks.md 2.7):
  ``' what is the summary of article " {source} "?'`` -> the headline, ``pre_caption``'d, encoded
  without a leading space. With ``noise_ratio`` > 0 each training ``prev_output_tokens`` token after
  BOS is replaced, with that probability, by a random text token (the target stays clean).
- ``GlueDataset`` (one subclass per GLUE dataset, ``GLUE_DATASETS``; docs/tasks.md 2.8): prompts and
  label words are data (``GLUE``). Official packing: the decoder prompt (the whole source with
  ``prompt_type=src``) is followed by the label tokens and **no EOS** target.
- ``TextInfillingDataset`` (the text half of pretraining, docs/tasks.md 3.3):
  ``' what is the complete text of " {masked} "?'`` -> the original text, masked with
  ``noising.span_mask`` (whole words, Poisson spans, one ``<mask>`` per span).

File layouts (``Schema`` objects, passed to the readers directly): ``text_pair`` (``uniq_id, source,
target``) for Gigaword, ``pretrain_text`` (``uniq_id, text``) for infilling, and ``GLUE_SINGLE``
(``sentence, label``, the official SST-2 layout) / ``GLUE_PAIR`` (``sentence1, sentence2, label``, the
official MRPC / MNLI layout) for GLUE. Other official files load with ``--selected-cols``
(docs/tasks.md 1.1): Gigaword ``0,1``, CoLA ``1,2``, QNLI and RTE ``1,2,3``, QQP ``3,4,5``. Samples
without an id column get their row number in the file as ``uniq_id``.

Randomness (summary noise, infilling masks) is seeded per row from ``(seed, epoch, row text)``:
training sees new noise every epoch, validation the same masks every time.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ofa.data_utils.datasets import DataConfig, OFADataset
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import Schema
from ofa.data_utils.noising import span_mask
from ofa.data_utils.text import pre_caption

# the official SST-2 and MRPC / MNLI layouts; CoLA, QNLI, RTE and QQP files load with --selected-cols
GLUE_SINGLE = Schema("glue_single", ("sentence", "label"), image_columns=())
GLUE_PAIR = Schema("glue_pair", ("sentence1", "sentence2", "label"), image_columns=())


@dataclass
class TextDataConfig(DataConfig):
    """``DataConfig`` plus the knobs of the text tasks."""

    seed: int = 1
    noise_ratio: float = 0.0  # gigaword: prev_output token noise (training only)
    mask_ratio: float = 0.3  # infilling: fraction of words masked
    poisson_lambda: float = 3.0  # infilling: mean span length (words)
    replace_length: int = 1  # infilling: 1 one <mask> per span, 0 delete, -1 one <mask> per token
    text_max_tokens: int = 256  # infilling: keep the last N tokens of the text (official 256 of 512)


def row_rng(*parts: Any) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (independent of PYTHONHASHSEED)."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return np.random.default_rng([zlib.crc32(key), zlib.adler32(key)])


class _TextDataset(OFADataset):
    """Text-only sample plumbing (per-row seeds use ``OFADataset.epoch``)."""

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        ex = super().__getitem__(index)
        if ex is not None and ex.get("uniq_id") is None:
            ex["uniq_id"] = self.reader.global_index(index)  # row number in the file
        return ex

    def rng(self, *parts: Any) -> np.random.Generator:
        epoch = self.epoch if self.is_train else 0
        return row_rng(getattr(self.cfg, "seed", 1), epoch, *parts)


# ------------------------------------------------------------------------------------------ Gigaword
class SummaryDataset(_TextDataset):
    """``what is the summary of article " {source} "?`` -> the headline."""

    columns = ("source", "target")
    prompt = ' what is the summary of article " {} "?'

    def build(self, row):
        source = pre_caption(row["source"], self.cfg.max_src_length).replace("<unk>", "unk")
        target = pre_caption(row["target"], self.cfg.max_tgt_length).replace("<unk>", "unk")
        if not source or not target:
            raise DataError("empty article or headline", field="source" if not source else "target")
        # the whole prompt is cut to max_src_length tokens (which can drop the closing '"?', as officially)
        src = torch.cat([torch.tensor([self.bos]), self.encode(self.prompt.format(source), self.cfg.max_src_length),
                         torch.tensor([self.eos])])
        tgt = self.encode(target)
        ex = self.example(src, tgt, None, uniq_id=None, refs=[row["target"].strip().lower()])
        ratio = getattr(self.cfg, "noise_ratio", 0.0)
        if self.is_train and ratio > 0:
            prev = ex["prev_output_tokens"].clone()
            rng = self.rng(row["source"], row["target"])
            hit = rng.random(len(prev)) < ratio
            hit[0] = False  # never the BOS
            # random text tokens: ids [4, first <code>) as officially (the range includes <mask>)
            prev[torch.from_numpy(hit)] = torch.from_numpy(
                rng.integers(self.dict.nspecial, self.tokenizer.vocab.code_start, int(hit.sum()))).long()
            ex["prev_output_tokens"] = prev
        return ex


# ------------------------------------------------------------------------------------------ GLUE
@dataclass(frozen=True)
class GlueSpec:
    """Prompt and labels of one GLUE dataset.

    ``template`` is formatted with the normalised text columns; ``labels`` maps the raw label field
    to the answer word; ``answers`` are the candidates (closed set); ``positive`` is the answer
    counted as the positive class by F1 / MCC; ``metrics`` are extra metrics beyond accuracy;
    ``best`` is the official best-checkpoint metric.
    """

    template: str
    labels: Mapping[str, str]
    answers: Tuple[str, ...]
    schema: Schema = GLUE_PAIR
    positive: str = "yes"
    metrics: Tuple[str, ...] = ()
    best: str = "acc"

    @property
    def text_columns(self) -> Tuple[str, ...]:
        return tuple(c for c in self.schema.columns if c != "label")


_YES_NO = {"0": "no", "1": "yes"}
# RTE / QNLI digit labels follow GLUE (0 = entailment); MNLI digits follow the official OFA files
_ENTAIL_2 = {"entailment": "yes", "not_entailment": "no", "0": "yes", "1": "no"}
_ENTAIL_3 = {"entailment": "yes", "neutral": "maybe", "contradiction": "no", "0": "maybe", "1": "yes", "2": "no"}

GLUE: Dict[str, GlueSpec] = {
    "cola": GlueSpec(' is the text " {sentence} " grammatically correct?', _YES_NO, ("no", "yes"),
                     schema=GLUE_SINGLE, metrics=("mcc",), best="mcc"),
    "sst2": GlueSpec(' is the sentiment of text " {sentence} " positive or negative?',
                     {"0": "negative", "1": "positive"}, ("negative", "positive"), schema=GLUE_SINGLE,
                     positive="positive"),
    "mrpc": GlueSpec(' does text1 " {sentence1} " and text2 " {sentence2} " have the same semantics?', _YES_NO,
                     ("no", "yes"), metrics=("f1",)),
    "qqp": GlueSpec(' is question " {sentence1} " and question " {sentence2} " equivalent?', _YES_NO,
                    ("no", "yes"), metrics=("f1",)),
    "mnli": GlueSpec(' can text1 " {sentence1} " imply text2 " {sentence2} "?', _ENTAIL_3, ("no", "yes", "maybe")),
    "rte": GlueSpec(' can text1 " {sentence1} " imply text2 " {sentence2} "?', _ENTAIL_2, ("no", "yes")),
    # QNLI files hold (question, sentence); the prompt names the sentence first
    "qnli": GlueSpec(' does " {sentence2} " contain the answer to question " {sentence1} "?', _ENTAIL_2,
                     ("no", "yes")),
}


def glue_text(text: str, max_words: int) -> str:
    """Official GLUE normalisation: lowercase, collapse spaces, keep ``max_words`` words."""
    return " ".join(text.lower().split()[:max_words])


class GlueDataset(_TextDataset):
    """Prompt from ``spec.template`` -> the label word (subclasses set ``spec``)."""

    uses_prompt_type = True
    spec: GlueSpec

    def label_word(self, raw: str) -> str:
        raw = raw.strip()
        word = self.spec.labels.get(raw, raw if raw in self.spec.answers else None)
        if word is None:
            raise DataError(f"label {raw!r} is not one of {sorted(self.spec.labels)} or {list(self.spec.answers)}",
                            field="label")
        return word

    def build(self, row):
        texts = {c: glue_text(row[c], self.cfg.max_src_length) for c in self.spec.text_columns}
        empty = [c for c, t in texts.items() if not t]
        if empty:
            raise DataError("empty text", field=empty[0])
        label = self.label_word(row["label"])
        src = self.source(self.spec.template.format(**texts))
        return self.example(src, self.encode(" " + label), None, uniq_id=None, conf=1.0,
                            ref_dict={label: 1.0}, refs=[label])

    def pack_target(self, src, tgt, codes=False):
        """Official GLUE packing: ``prev = prompt + label[:-1]``, ``target = pad... + label`` (no EOS)."""
        prompt = super().pack_target(src, tgt)["decoder_prompt"]
        prev = torch.cat([prompt, tgt[:-1]])
        target = torch.cat([prev[1:], tgt[-1:]])
        target[: len(prompt) - 1] = self.pad
        return {"prev_output_tokens": prev, "target": target, "decoder_prompt": prompt}


def _glue_dataset(name: str, spec: GlueSpec) -> type:
    cls_name = "".join(p.capitalize() for p in name.split("_")) + "Dataset"
    return type(cls_name, (GlueDataset,), {"spec": spec, "columns": spec.schema.columns,
                                           "__doc__": f"GLUE {name}: {spec.template!r}"})


GLUE_DATASETS: Dict[str, type] = {name: _glue_dataset(name, spec) for name, spec in GLUE.items()}


# ------------------------------------------------------------------------------------------ infilling
def word_start_flags(tokenizer) -> np.ndarray:
    """Bool ``[V]``: does dictionary entry ``i`` begin a word?

    GPT-2 BPE: the decoded token starts with a space (fairseq ``is_beginning_of_word``);
    SentencePiece: the piece starts with ``▁``. Specials, ``<mask>``, codes and bins count as word
    starts, as in fairseq.
    """
    d = tokenizer.dictionary
    flags = np.ones(len(d), dtype=bool)
    kind = getattr(tokenizer, "kind", "")
    for i in range(d.nspecial, tokenizer.vocab.mask):
        sym = d[i]
        if kind == "gpt2":
            if sym.isdigit():
                flags[i] = tokenizer.bpe.decode([int(sym)]).startswith(" ")
        elif kind == "sentencepiece":
            flags[i] = sym.startswith("\u2581")
    return flags


class TextInfillingDataset(_TextDataset):
    """``what is the complete text of " {masked} "?`` -> the original text."""

    columns = ("uniq_id", "text")
    prefix = ' what is the complete text of "'
    suffix = ' "?'

    def __init__(self, reader, tokenizer, cfg, split="train"):
        super().__init__(reader, tokenizer, cfg, split)
        self.word_starts = word_start_flags(tokenizer)
        self.mask = tokenizer.vocab.mask
        self._prefix, self._suffix = self.encode(self.prefix), self.encode(self.suffix)

    def build(self, row):
        text = row["text"].strip().lower()
        if not text:
            raise DataError("empty text", field="text")
        tokens = self.encode(" " + text, 2 * self.cfg.text_max_tokens)[-self.cfg.text_max_tokens:]
        c = self.cfg
        masked = span_mask(tokens.tolist(), self.word_starts[tokens.numpy()].tolist(), c.mask_ratio,
                           c.poisson_lambda, c.replace_length, self.rng(row["uniq_id"], text), self.mask)
        masked = torch.tensor(masked, dtype=torch.long)
        src = torch.cat([torch.tensor([self.bos]), self._prefix, masked, self._suffix, torch.tensor([self.eos])])
        return self.example(src, tokens, None, uniq_id=row["uniq_id"], masked=masked)

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        batch = super().collater(samples)
        if batch:
            batch["masked"] = [s["masked"] for s in samples if s is not None]
        return batch
