"""Per-task datasets that turn official rows into fairseq samples (docs/tasks.md section 2).

Every dataset reads rows through a sharded reader (``readers.py``), builds one example per row with
``build(row)`` and batches with ``collate``. A batch is::

    {"id": LongTensor [B] (local row index), "uniq_ids": [B] ids from the file,
     "nsentences": B, "ntokens": non-pad target tokens,
     "net_input": {"src_tokens" [B, L], "src_lengths" [B], "patch_images" [B, 3, S, S],
                   "patch_masks" bool [B], "prev_output_tokens" [B, T]},
     "target": [B, T]}

plus per-task extras: ``conf`` (answer confidence, [B]), ``ref_dict`` (answer -> VQA score),
``refs`` (reference captions), ``w_resize_ratios`` / ``h_resize_ratios`` / ``region_coords``
(grounding; boxes x0,y0,x1,y1 in original pixels), ``decoder_prompts`` and ``prefix_tokens``
(the forced decoder prompt for ``prompt_type`` src / prev_output).

Sequences follow the official packing: ``source = [bos] + prompt + [eos]``,
``prev_output_tokens = [bos] + target``, ``target = target + [eos]``, right padding.

Lengths are bounded in tokens, not only in words: ``pre_caption`` / ``pre_question`` keep
``max_src_length`` words, but one "word" (a long URL, a run of CJK text) can be hundreds of BPE tokens,
more than the model's positions. So the encoded prompt is cut to ``max_src_length`` tokens (official
``encode_text(..., length=max_src_length)``, as its Gigaword source), and a decoder input (decoder prompt
+ target) to ``max_target_positions`` tokens (``fit_target``). Targets keep their official bounds
otherwise: words for captions (``max_tgt_length`` words can be more tokens, and are kept whole), tokens
for VQA answers; image-code targets (``code_mask``) are never cut.

Bad rows raise ``DataError`` naming the file, line and field; with ``bad_rows="skip"`` they are
skipped and counted in ``skipped`` instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from fairseq.data import FairseqDataset, data_utils

from ofa.data_utils.bad_rows import SkippedRows
from ofa.data_utils.boxes import box_to_bin_string
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import box_inside, parse_answers, parse_box
from ofa.data_utils.images import decode_b64, decode_bytes
from ofa.data_utils.readers import locate
from ofa.data_utils.text import pre_caption, pre_question, strip_punctuation
from ofa.data_utils.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN,
    STD,
    grounding_resize,
    square_resize,
    train_augment,
)


@dataclass
class DataConfig:
    """What the datasets need from a task's configuration."""

    patch_image_size: int = 480
    max_src_length: int = 128
    max_tgt_length: int = 30
    num_bins: int = 1000
    max_image_size: int = 512
    prompt_type: str = "none"  # vqa / snli_ve / classification: none | src | prev_output
    add_caption: bool = False  # snli_ve: give the text premise too (official --add-caption)
    imagenet_norm: bool = False
    augment: bool = False  # training-time RandAugment (classification)
    max_objects: int = 100  # detection: objects per target sequence
    bad_rows: str = "fail"  # fail | skip
    max_image_pixels: Optional[int] = 89_478_485
    # the model's text positions (``OFAModelConfig`` defaults; the relative-position tables hold 1024): sources
    # and decoder inputs are cut to them, so no row can index past the position tables
    max_source_positions: int = 1024
    max_target_positions: int = 1024


class OFADataset(FairseqDataset):
    """Base class: row reading, error handling, image decoding, prompt packing and collation."""

    columns: Sequence[str] = ()  # schema columns this task reads, in the order build() expects
    uses_prompt_type = False  # only closed-set answer tasks put a prompt into the decoder

    def __init__(self, reader, tokenizer, cfg: DataConfig, split: str = "train"):
        self.reader, self.tokenizer, self.cfg, self.split = reader, tokenizer, cfg, split
        self.dict = tokenizer.dictionary
        self.bos, self.eos, self.pad = self.dict.bos(), self.dict.eos(), self.dict.pad()
        self.skipped_rows = SkippedRows()  # --bad-rows skip: the distinct rows skipped (data_utils/bad_rows.py)
        names = reader.column_names
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise DataError(f"reader lacks columns {missing} needed by {type(self).__name__} (has {list(names)})",
                            reader.path)
        self._pos = [names.index(c) for c in self.columns]
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.imagenet_norm else (MEAN, STD)
        self.epoch = 1  # fairseq's epoch (set_epoch), for datasets that draw per epoch

    @property
    def skipped(self) -> int:
        """How many distinct bad rows this rank skipped (a row read again is not counted again)."""
        return len(self.skipped_rows)

    @property
    def prompt_type(self) -> str:
        return self.cfg.prompt_type if self.uses_prompt_type else "none"

    @property
    def is_train(self) -> bool:
        return self.split == "train"

    # ---------------------------------------------------------------- fairseq dataset API
    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        g = self.reader.global_index(index)
        try:
            values = self.reader[index]
            row = {c: values[p] for c, p in zip(self.columns, self._pos)}
            example = self.build(row)
        except DataError as e:
            err = locate(e, self.reader, g)
            if self.cfg.bad_rows == "skip":
                if not self.reader.is_padding(index):  # a padding row is another rank's to count
                    self.skipped_rows.add(self.reader.path, g)
                return None
            raise err from None
        if "uniq_id" in example and example["uniq_id"] is None:
            example["uniq_id"] = g  # files without an id column: the row's 0-based line number in the file
        example["id"] = index
        example["padding_row"] = self.reader.is_padding(index)
        return example

    def num_tokens(self, index: int) -> int:
        return self.cfg.max_src_length

    def size(self, index: int) -> int:
        return self.cfg.max_src_length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.reader.set_epoch(epoch)

    # ---------------------------------------------------------------- helpers
    def image(self, value) -> "PIL.Image.Image":  # noqa: F821
        if isinstance(value, bytes):
            return decode_bytes(value, self.cfg.max_image_pixels)
        return decode_b64(value, self.cfg.max_image_pixels)

    def encode(self, text: str, max_tokens: Optional[int] = None) -> torch.Tensor:
        """BPE ids of ``text`` (no BOS / EOS), the first ``max_tokens`` of them when given."""
        ids = self.tokenizer.encode(text)
        return ids[:max_tokens] if max_tokens is not None else ids

    def source(self, prompt: str) -> torch.Tensor:
        """``[bos] + prompt + [eos]``, the prompt cut to ``max_src_length`` tokens (which can drop the end of
        the instruction for an over-long text, as the official Gigaword source cut does) and to the
        encoder's text positions."""
        room = min(self.cfg.max_src_length, self.cfg.max_source_positions - 2)
        return torch.cat([torch.tensor([self.bos]), self.encode(prompt, room), torch.tensor([self.eos])])

    def fit_target(self, prompt: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """``tgt`` cut so that the decoder input ``prompt + tgt`` fits the decoder's ``max_target_positions``
        text positions (only an over-long text is cut: word-bounded targets, official in length, are not)."""
        room = max(self.cfg.max_target_positions - len(prompt), 0)
        return tgt[:room] if len(tgt) > room else tgt

    def pack_target(self, src: torch.Tensor, tgt: torch.Tensor, codes: bool = False) -> Dict[str, torch.Tensor]:
        """prev/target/decoder prompt for ``cfg.prompt_type`` (targets of prompt positions are pad); a text
        target is cut to the decoder's positions (``fit_target``), image codes (``codes``) are not."""
        bos = torch.tensor([self.bos])
        kind = self.prompt_type
        if kind == "none":
            prompt = bos
        elif kind == "src":
            prompt = src
        elif kind == "prev_output":
            prompt = src[:-1]
        else:
            raise DataError(f"unknown prompt_type {kind!r}; choose none, src or prev_output")
        if not codes:  # image codes are decoded at image positions, not text ones
            tgt = self.fit_target(prompt, tgt)
        prev = torch.cat([prompt, tgt])
        target = torch.cat([prev[1:], torch.tensor([self.eos])])
        target[: len(target) - len(tgt) - 1] = self.pad
        return {"prev_output_tokens": prev, "target": target, "decoder_prompt": prompt}

    def example(self, src: torch.Tensor, tgt: torch.Tensor, image: Optional[torch.Tensor], **extra) -> Dict[str, Any]:
        ex = {"source": src, "patch_image": image, "patch_mask": image is not None, **extra}
        ex.update(self.pack_target(src, tgt, codes=bool(extra.get("code_mask"))))
        return ex

    def caption_target(self, field: str):
        """``(target, references)`` of a ``&&``-joined caption field (punctuation stripped): in training the first
        caption cut to ``max_tgt_length`` words; otherwise every reference joined, for the validation loss only
        (scores use the references)."""
        captions = [strip_punctuation(c) for c in field.split("&&")]
        if not any(captions):
            raise DataError("empty caption", field="caption")
        if self.is_train:
            return self.encode(" " + " ".join(captions[0].split()[: self.cfg.max_tgt_length])), captions
        return self.encode(" " + "&&".join(captions)), captions

    def build(self, row: Dict[str, Any]) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- batching
    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        pad = self.pad

        def merge(key):
            return data_utils.collate_tokens([s[key] for s in samples], pad)

        size = self.cfg.patch_image_size
        images = torch.stack([s["patch_image"] if s["patch_image"] is not None else torch.zeros(3, size, size)
                              for s in samples])
        target = merge("target")
        batch: Dict[str, Any] = {
            "id": torch.tensor([s["id"] for s in samples]),
            "uniq_ids": [s.get("uniq_id") for s in samples],
            "padding_rows": [s["padding_row"] for s in samples],
            "nsentences": len(samples),
            "ntokens": int(target.ne(pad).sum()),
            "net_input": {
                "src_tokens": merge("source"),
                "src_lengths": torch.tensor([s["source"].numel() for s in samples]),
                "patch_images": images,
                "patch_masks": torch.tensor([s["patch_mask"] for s in samples]),
                "prev_output_tokens": merge("prev_output_tokens"),
            },
            "target": target,
        }
        prompts = [s["decoder_prompt"] for s in samples]
        batch["decoder_prompts"] = prompts
        if self.prompt_type != "none":
            batch["prefix_tokens"] = data_utils.collate_tokens([p[1:] for p in prompts], pad)
        if "conf" in samples[0]:
            batch["conf"] = torch.tensor([s["conf"] for s in samples], dtype=torch.float)
        for key in ("ref_dict", "refs"):
            if key in samples[0]:
                batch[key] = [s[key] for s in samples]
        if "w_resize_ratio" in samples[0]:
            batch["w_resize_ratios"] = torch.tensor([s["w_resize_ratio"] for s in samples])
            batch["h_resize_ratios"] = torch.tensor([s["h_resize_ratio"] for s in samples])
        if "region_coord" in samples[0]:
            batch["region_coords"] = torch.tensor([s["region_coord"] for s in samples])
        return batch


class CaptionDataset(OFADataset):
    """`` what does the image describe?`` -> the caption (train) or ``&&``-joined references (eval)."""

    columns = ("uniq_id", "image", "caption")
    prompt = " what does the image describe?"

    def build(self, row):
        image = square_resize(self.image(row["image"]), self.cfg.patch_image_size, self.mean, self.std)
        tgt, captions = self.caption_target(row["caption"])
        return self.example(self.source(self.prompt), tgt, image, uniq_id=row["uniq_id"], refs=captions)


class RefcocoDataset(OFADataset):
    """``which region does the text " {text} " describe?`` -> four ``<bin_i>`` tokens."""

    columns = ("uniq_id", "image", "text", "region_coord")

    def build(self, row):
        img = self.image(row["image"])
        box = parse_box(row["region_coord"])
        box_inside(box, img.size, row["region_coord"])
        tensor, _, w_ratio, h_ratio = grounding_resize(img, box, self.cfg.patch_image_size)
        text = pre_caption(row["text"], self.cfg.max_src_length)
        if not text:
            raise DataError("empty referring expression", field="text")
        src = self.source(f' which region does the text " {text} " describe?')
        tgt = self.encode(box_to_bin_string(box, w_ratio, h_ratio, self.cfg.max_image_size, self.cfg.num_bins))
        ex = self.example(src, tgt, tensor, uniq_id=row["uniq_id"], w_resize_ratio=w_ratio,
                          h_resize_ratio=h_ratio, region_coord=list(box))
        return ex


class VqaDataset(OFADataset):
    """`` {question}`` -> the most confident answer; ``conf`` weights its loss, ``ref_dict`` scores it."""

    uses_prompt_type = True
    columns = ("question_id", "image", "question", "answers")

    def build(self, row):
        image = square_resize(self.image(row["image"]), self.cfg.patch_image_size, self.mean, self.std)
        question = pre_question(row["question"], self.cfg.max_src_length)
        if not question:
            raise DataError("empty question", field="question")
        question = question if question.endswith("?") else question + "?"
        ref_dict = parse_answers(row["answers"])
        answer = max(ref_dict, key=ref_dict.get)
        tgt = self.encode(" " + answer, self.cfg.max_tgt_length)
        return self.example(self.source(" " + question), tgt, image, uniq_id=row["question_id"],
                            conf=ref_dict[answer], ref_dict=ref_dict)


SNLI_LABELS = {"contradiction": "no", "entailment": "yes", "neutral": "maybe"}


class SnliVeDataset(OFADataset):
    """``does the image describe " {hypothesis} "?`` -> yes / no / maybe."""

    uses_prompt_type = True
    columns = ("uniq_id", "image", "hypothesis", "caption", "label")

    def build(self, row):
        image = square_resize(self.image(row["image"]), self.cfg.patch_image_size, self.mean, self.std)
        label = SNLI_LABELS.get(row["label"].strip())
        if label is None:
            raise DataError(f"label {row['label']!r} is not one of {sorted(SNLI_LABELS)}", field="label")
        hypothesis = pre_caption(row["hypothesis"], self.cfg.max_src_length)
        if not hypothesis:
            raise DataError("empty hypothesis", field="hypothesis")
        if self.cfg.add_caption:
            caption = pre_caption(row["caption"], self.cfg.max_src_length)
            prompt = f' can image and text1 " {caption} " imply text2 " {hypothesis} "?'
        else:
            prompt = f' does the image describe " {hypothesis} "?'
        return self.example(self.source(prompt), self.encode(" " + label), image, uniq_id=row["uniq_id"],
                            conf=1.0, ref_dict={label: 1.0})


class ImageClassifyDataset(OFADataset):
    """`` what does the image describe?`` -> the class name."""

    uses_prompt_type = True
    columns = ("image", "label_name")
    prompt = " what does the image describe?"

    def __init__(self, reader, tokenizer, cfg, split="train"):
        super().__init__(reader, tokenizer, cfg, split)
        self._augment = train_augment(cfg.patch_image_size, self.mean, self.std) if cfg.augment and self.is_train else None

    def build(self, row):
        img = self.image(row["image"])
        image = self._augment(img) if self._augment is not None else square_resize(
            img, self.cfg.patch_image_size, self.mean, self.std)
        label = row["label_name"].strip()
        if not label:
            raise DataError("empty label", field="label_name")
        return self.example(self.source(self.prompt), self.encode(" " + label), image, uniq_id=None,
                            conf=1.0, ref_dict={label: 1.0})


DATASETS = {
    "caption": CaptionDataset,
    "refcoco": RefcocoDataset,
    "vqa": VqaDataset,
    "snli_ve": SnliVeDataset,
    "image_classify": ImageClassifyDataset,
}
