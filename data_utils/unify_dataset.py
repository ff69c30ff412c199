"""The pretraining mixture of OFA (official ``data/pretrain_data/unify_dataset.py``; docs/tasks.md 3).

``UnifyDataset`` reads ``pretrain_vl`` rows (``uniq_id, image, caption, question, refs, gt_objects,
dataset_name, type``). One row gives, in training:

=================== ================================================== =============================================
type                main example (encoder text -> target)              second example
=================== ================================================== =============================================
``caption``         ``" what does the image describe?"`` -> caption     ITM, 50/50: ``' does the image describe " {c} "?'``
                                                                       -> ``" yes"`` (true caption) / ``" no"``
                                                                       (negative caption)
``qa``              ``" {question}"`` -> most confident answer          ITM-QA: ``' what is the answer to question
                    (``conf`` = its confidence)                         " {q} ". is " {a} "?'`` -> yes / no
``visual_grounding`` ``' which region does the text " {t} " describe?'`` grounded captioning: ``'  what does the region
                    -> 4 ``<bin>`` tokens                              describe? region:'`` + the 4 bins -> ``" {t}"``
=================== ================================================== =============================================

(``refs`` holds the ``conf|!+answer&&...`` answers of a qa row and the ``x0,y0,x1,y1`` box of a
grounding row; ``caption`` holds the grounding text.) Other splits make the main example only.

Mixture (train only): the V-L row at local position ``i`` with ``(i + 1) % extras_every == 0`` also
brings one block of uni-modal extras, each with ``conf = 2.0``: ``text_per_block`` text-infilling
examples, ``image_per_block`` image-infilling examples and ``detection_per_block`` detection examples
(from the sources given). Block ``k = i // extras_every`` reads rows ``k * n .. k * n + n - 1``
(modulo the file length) of each extra source, each shuffled per epoch by its own reader. So, with
the defaults and contiguous batches, every 8 V-L rows give 16 V-L examples : 2 text : 1 image : 1
detection, the official ratio. (The official counter counts reads per worker process; the position
rule gives the same cadence, deterministic and independent of the number of workers.)

- Text infilling: lowercased text, ``" " + text`` encoded, the last ``text_max_tokens`` (256) tokens
  of the first 512 kept, BART whole-word Poisson span masking (``noising.span_mask``; mask_ratio 0.3,
  lambda 3, one ``<mask>`` per span); encoder text ``' what is the complete text of " {masked} "?'``
  (packed as the ``text_infilling`` task does, without the official stray BOS inside the quotes),
  target the original tokens; the image is a ``3 x 2c x 2c`` zero tensor with ``patch_mask`` False
  (``c = code_image_size``).
- Image infilling: the ``2c x 2c`` image (resized if the file holds another size), normalised, with
  ``[c/2 : 3c/2]`` in both axes set to 0 (grey); encoder text ``" what is the image in the middle
  part?"``; target the ``(c/8)^2`` (256) codes of the centre as ``<code_i>`` tokens (offset
  ``tokenizer.vocab.code_start``) + EOS; ``code_mask`` True, so the decoder uses image positions.
- Detection: horizontal flip (p = 0.5), large-scale jitter to ``2c x 2c`` (scale in [1, 1.5]),
  boxes divided by ``max_image_size`` (so in [0, 2c / max_image_size] = [0, 0.5]); encoder text
  ``' what are the objects in the image?'``; target, per kept box in file order, 4 bin tokens and
  the BPE of ``" {category}"``, then EOS. ``boxes`` is ``x0,y0,x1,y1,cat_id,cat_name`` joined by ``&&``.

V-L transforms: caption / qa: ``RandomResize(range(P, round(P * vl_max_scale) + 1), max_size=round(P *
1.75))`` -> ``CenterCrop(P)`` -> RandAugment(2, 7, the official ten ops; ``vl_rand_augment=False`` skips
it) -> normalise (P = 384: scales 384..480, max 672 as official). Grounding: the same resize ->
``ObjectCenterCrop(P)`` -> normalise; boxes / ``max_image_size`` (in [0, 0.75] for P = 384).
Data whose labels are colours and positions (the embedded scenes) want ``vl_max_scale=1`` and no
RandAugment: Brightness / Equalize change colour names, Translate / Rotate / Shear and the crop move or
cut the objects that captions place "on the left".

Negatives (official ``get_negative_caption`` / ``get_negative_answer``): ``neg_sample_dir`` holds
``type2ans.json``, ``object.txt``, ``all_captions.txt``; without it the pools are collected from the V-L
file itself (captions, ``gt_objects``, answers of qa rows under type ``other``).

``collater`` returns batch v1 (V-L examples, ``P x P`` images) or, when the batch holds extras, the
list ``[v1, v2]`` (extras, ``2c x 2c`` images; ``net_input["code_masks"]`` bool ``[B]`` marks the
image-infilling rows), which the criterion's pair logic consumes (``sample_patch_num`` on v1).

Randomness: every sample draws from ``random.Random`` seeded by ``(pretrain_seed, epoch, position,
part)``, so a run is reproducible (the official numpy-seed quirk, one RandomAugment op choice per
epoch, is not reproduced).
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ofa.data_utils import codes as code_text
from ofa.data_utils.boxes import quantize
from ofa.data_utils.datasets import OFADataset
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import box_inside, parse_answers, parse_box, parse_detection_boxes
from ofa.data_utils.noising import span_mask
from ofa.data_utils.pretrain_transforms import (
    apply_seeded,
    center_crop,
    hflip,
    large_scale_jitter,
    object_center_crop,
    official_rand_augment,
    random_resize,
)
from ofa.data_utils.readers import locate
from ofa.data_utils.text import pre_caption, pre_question
from ofa.data_utils.text_datasets import TextDataConfig, word_start_flags
from ofa.data_utils.transforms import square_resize, to_tensor

logger = logging.getLogger(__name__)

CAPTION_PROMPT = " what does the image describe?"
ITM_PROMPT = ' does the image describe " {} "?'
ITM_QA_PROMPT = ' what is the answer to question " {} ". is " {} "?'
GROUNDING_PROMPT = ' which region does the text " {} " describe?'
REGION_CAPTION_PROMPT = "  what does the region describe? region:"


def region_caption_source(dataset, region: str) -> torch.Tensor:
    """``[bos] + REGION_CAPTION_PROMPT + region + [eos]`` for ``dataset`` (an ``OFADataset``), the prompt and the
    region's ``<bin>`` string (``box_to_bin_string``) encoded apart, as the official unify dataset does."""
    return torch.cat([torch.tensor([dataset.bos]), dataset.encode(REGION_CAPTION_PROMPT), dataset.encode(region),
                      torch.tensor([dataset.eos])])
TEXT_PREFIX = ' what is the complete text of "'
TEXT_SUFFIX = ' "?'
IMAGE_PROMPT = " what is the image in the middle part?"
DETECTION_PROMPT = " what are the objects in the image?"
EXTRA_CONF = 2.0
VL_TYPES = ("caption", "qa", "visual_grounding")


@dataclass
class UnifyDataConfig(TextDataConfig):
    pretrain_seed: int = 7
    code_image_size: int = 128
    vqgan_factor: int = 8
    extras_every: int = 8
    text_per_block: int = 2
    image_per_block: int = 1
    detection_per_block: int = 1
    vl_max_scale: float = 1.25  # largest random short side / patch size (official 480 / 384)
    vl_rand_augment: bool = True  # official RandAugment(2, 7) on caption / qa images (train split)
    vl_max_size_ratio: float = 1.75  # RandomResize max_size / patch size (official 672 / 384)
    detection_scale_max: float = 1.5


@dataclass
class NegativePools:
    """What negatives are drawn from (official ``neg_sample_dir`` files)."""

    captions: List[str]
    objects: List[str]
    type2ans: Dict[str, List[str]]

    def __post_init__(self):
        self.ans2type: Dict[str, str] = {}
        for t, answers in self.type2ans.items():
            for a in answers:
                self.ans2type[a] = t

    @classmethod
    def from_dir(cls, folder: str) -> "NegativePools":
        def lines(name):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                return [ln.strip() for ln in f if ln.strip()]

        with open(os.path.join(folder, "type2ans.json"), encoding="utf-8") as f:
            type2ans = json.load(f)
        return cls(lines("all_captions.txt"), lines("object.txt"), type2ans)

    @classmethod
    def from_reader(cls, reader, names) -> "NegativePools":
        """Pools collected from a pretrain_vl reader (every row; for small files / demos)."""
        pos = {c: names.index(c) for c in ("caption", "refs", "gt_objects", "type")}
        captions, objects, answers = [], set(), set()
        for g in range(reader.total):
            row = reader.read_row(g)
            t = row[pos["type"]].strip()
            if t == "caption" and row[pos["caption"]].strip():
                captions.append(row[pos["caption"]].strip())
            if row[pos["gt_objects"]].strip():
                objects.update(o.strip() for o in row[pos["gt_objects"]].split("&&") if o.strip())
            if t == "qa":
                try:
                    answers.update(parse_answers(row[pos["refs"]]))
                except DataError:
                    pass
        return cls(captions or ["an image"], sorted(objects) or ["object", "thing"],
                   {"other": sorted(answers) or ["yes", "no"]})

    def negative_caption(self, caption: str, gt_objects: str, rng: random.Random) -> str:
        if gt_objects.strip() and rng.random() > 0.6:
            gt = rng.choice(gt_objects.strip().split("&&"))
            neg = rng.choice(self.objects[:-1]) if len(self.objects) > 1 else self.objects[0]
            neg = self.objects[-1] if neg == gt else neg
            return caption.replace(gt, neg)
        return rng.choice(self.captions)

    def negative_answer(self, answer: str, conf: float, rng: random.Random) -> str:
        prob = rng.random()
        if conf > prob + 0.1 and answer in self.ans2type:
            kind = self.ans2type[answer]
            if kind == "how many" and answer.isdigit() and prob > 0.5:
                return str(int(answer) + rng.choice([-1, 1])) if answer != "0" else "1"
            pool = self.type2ans[kind]
        else:
            pool = self.type2ans.get("other") or next(iter(self.type2ans.values()))
        neg = rng.choice(pool[:-1]) if len(pool) > 1 else pool[0]
        return pool[-1] if neg == answer else neg


class UnifyDataset(OFADataset):
    """One V-L row -> its examples, plus a block of uni-modal extras every ``extras_every`` rows."""

    columns = ("uniq_id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type")

    def __init__(self, reader, tokenizer, cfg: UnifyDataConfig, split: str = "train"):
        super().__init__(reader, tokenizer, cfg, split)
        self.text_reader = self.image_reader = self.detection_reader = None
        self.negatives: Optional[NegativePools] = None
        self.word_starts = word_start_flags(tokenizer)
        self._augment = official_rand_augment(2, 7)
        c = cfg.code_image_size
        self.extra_size = 2 * c
        self.mask_lo, self.mask_hi = int(0.5 * c), int(1.5 * c)
        self.num_codes = (c // cfg.vqgan_factor) ** 2

    # ---------------------------------------------------------------- set-up
    def attach_extras(self, text_reader=None, image_reader=None, detection_reader=None,
                      negatives: Optional[NegativePools] = None) -> None:
        """Uni-modal sources (readers with the pretrain_text / _image / _detection columns) and negatives."""
        self.text_reader, self.image_reader, self.detection_reader = text_reader, image_reader, detection_reader
        self.negatives = negatives
        for r in (text_reader, image_reader, detection_reader):
            if r is not None:
                r.set_epoch(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for r in (self.text_reader, self.image_reader, self.detection_reader):
            if r is not None:
                r.set_epoch(epoch)

    def rng(self, index: int, part: str) -> random.Random:
        return random.Random(f"{self.cfg.pretrain_seed}|{self.epoch if self.is_train else 0}|{index}|{part}")

    def has_extras(self, index: int) -> bool:
        c = self.cfg
        return (self.is_train and c.extras_every > 0 and (index + 1) % c.extras_every == 0
                and any(r is not None for r in (self.text_reader, self.image_reader, self.detection_reader)))

    # ---------------------------------------------------------------- fairseq API
    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        self._index = index
        ex = super().__getitem__(index)  # -> build(row): {"vl": [...]}
        if ex is None:
            return None
        vl = ex["vl"]
        for e in vl:
            e["id"], e["padding_row"] = index, ex["padding_row"]
        extras: List[Dict[str, Any]] = []
        if self.has_extras(index):
            extras = self.extra_examples(index // self.cfg.extras_every)
            for e in extras:
                e["id"], e["padding_row"] = index, ex["padding_row"]
        return {"vl": vl, "extras": extras, "id": index, "padding_row": ex["padding_row"]}

    def collater(self, samples):
        samples = [s for s in samples if s is not None]
        vl = [e for s in samples for e in s["vl"]]
        extras = [e for s in samples for e in s["extras"]]
        v1 = super().collater(vl)
        if not extras:
            return v1
        v2 = super().collater(extras)
        v2["net_input"]["code_masks"] = torch.tensor([bool(e.get("code_mask", False)) for e in extras])
        return [v1, v2]

    # ---------------------------------------------------------------- V-L examples
    def vl_image(self, img, rng):
        P, c = self.cfg.patch_image_size, self.cfg
        scales = range(P, max(P, round(P * c.vl_max_scale)) + 1)
        img, _ = random_resize(img, [], scales, round(P * c.vl_max_size_ratio), rng)
        img = center_crop(img, P)
        if self.is_train and self.cfg.vl_rand_augment:
            img = apply_seeded(self._augment, img, rng)
        return to_tensor(img, self.mean, self.std)

    def bins(self, box) -> str:
        b = quantize(list(box), self.cfg.max_image_size, self.cfg.num_bins)
        return " ".join(f"<bin_{int(v)}>" for v in b)

    def vl_example(self, src, tgt, image, uniq_id, conf=1.0, **extra):
        return self.example(src, tgt, image, uniq_id=uniq_id, conf=float(conf), **extra)

    def build(self, row):
        index = getattr(self, "_index", 0)
        kind = row["type"].strip()
        if kind not in VL_TYPES:
            raise DataError(f"type {kind!r} is not one of {list(VL_TYPES)}", field="type")
        rng = self.rng(index, "vl")
        img = self.image(row["image"])
        uid = row["uniq_id"]
        c = self.cfg
        out = []
        if kind == "visual_grounding":
            box = parse_box(row["refs"], "refs")
            box_inside(box, img.size, row["refs"], "refs")
            P = c.patch_image_size
            scales = range(P, max(P, round(P * c.vl_max_scale)) + 1)
            img, boxes = random_resize(img, [box], scales, round(P * c.vl_max_size_ratio), rng)
            img, boxes = object_center_crop(img, boxes[0], P)
            image = to_tensor(img, self.mean, self.std)
            region = self.bins(boxes[0])
            text = pre_caption(row["caption"], c.max_src_length)
            if not text:
                raise DataError("empty grounding text", field="caption")
            out.append(self.vl_example(self.source(GROUNDING_PROMPT.format(text)), self.encode(region), image, uid))
            if self.is_train:
                src = region_caption_source(self, region)
                tgt = self.encode(" " + pre_caption(row["caption"], c.max_tgt_length))
                out.append(self.vl_example(src, tgt, image, uid))
            return {"vl": out}
        image = self.vl_image(img, rng)
        if kind == "caption":
            caption = pre_caption(row["caption"], c.max_tgt_length)
            if not caption:
                raise DataError("empty caption", field="caption")
            ex = self.vl_example(self.source(CAPTION_PROMPT), self.encode(" " + caption), image, uid)
            if row["dataset_name"].strip() == "cc12m":  # official quirk: the first 2 target positions are pad
                ex["target"] = ex["target"].clone()
                ex["target"][:2] = self.pad
            out.append(ex)
            if self.is_train:
                if rng.random() >= 0.5:
                    src, ans = self.source(ITM_PROMPT.format(caption)), " yes"
                else:
                    neg = self.negative_pools().negative_caption(caption, row["gt_objects"], rng)
                    src, ans = self.source(ITM_PROMPT.format(pre_caption(neg, c.max_tgt_length))), " no"
                out.append(self.vl_example(src, self.encode(ans), image, uid))
        else:  # qa
            question = pre_question(row["question"], c.max_src_length)
            if not question:
                raise DataError("empty question", field="question")
            ref_dict = parse_answers(row["refs"], "refs")
            answer = max(ref_dict, key=ref_dict.get)
            conf = ref_dict[answer]
            out.append(self.vl_example(self.source(" " + question), self.encode(" " + answer, c.max_tgt_length),
                                       image, uid, conf=conf))
            if self.is_train:
                if rng.random() >= 0.5:
                    src, ans = self.source(ITM_QA_PROMPT.format(question, answer)), " yes"
                else:
                    neg = self.negative_pools().negative_answer(answer, conf, rng)
                    src, ans = self.source(ITM_QA_PROMPT.format(question, neg)), " no"
                out.append(self.vl_example(src, self.encode(ans), image, uid))
        return {"vl": out}

    def negative_pools(self) -> NegativePools:
        if self.negatives is None:
            self.negatives = NegativePools.from_reader(self.reader, self.reader.column_names)
        return self.negatives

    # ---------------------------------------------------------------- uni-modal extras
    def extra_examples(self, block: int) -> List[Dict[str, Any]]:
        c, out = self.cfg, []
        for reader, n, fn in ((self.text_reader, c.text_per_block, self.text_example),
                              (self.image_reader, c.image_per_block, self.image_example),
                              (self.detection_reader, c.detection_per_block, self.detection_example)):
            if reader is None:
                continue
            for j in range(n):
                i = (block * n + j) % len(reader)
                try:
                    out.append(fn(dict(zip(reader.column_names, reader[i])), f"{block}.{j}"))
                except DataError as e:
                    err = locate(e, reader, reader.global_index(i))
                    if c.bad_rows == "skip":
                        if not reader.is_padding(i):
                            self.skipped_rows.add(reader.path, reader.global_index(i))
                        continue
                    raise err from None
        return out

    def _extra(self, src, tgt, image, patch_mask: bool, uid, code_mask=False, **extra):
        ex = self.example(src, tgt, image, uniq_id=uid, conf=EXTRA_CONF, code_mask=code_mask, **extra)
        ex["patch_mask"] = patch_mask
        return ex

    def text_example(self, row, key):
        text = row["text"].strip().lower()
        if not text:
            raise DataError("empty text", field="text")
        c = self.cfg
        tokens = self.encode(" " + text, 2 * c.text_max_tokens)[-c.text_max_tokens:]
        rng = self.rng(-1, "text" + key)
        masked = span_mask(tokens.tolist(), self.word_starts[tokens.numpy()].tolist(), c.mask_ratio,
                           c.poisson_lambda, c.replace_length, _np_rng(rng), self.tokenizer.vocab.mask)
        src = torch.cat([torch.tensor([self.bos]), self.encode(TEXT_PREFIX), torch.tensor(masked, dtype=torch.long),
                         self.encode(TEXT_SUFFIX), torch.tensor([self.eos])])
        dummy = torch.zeros(3, self.extra_size, self.extra_size)
        return self._extra(src, tokens, dummy, False, row.get("uniq_id"))

    def image_example(self, row, key):
        img = self.image(row["image"])
        S = self.extra_size
        image = to_tensor(img, self.mean, self.std) if img.size == (S, S) else square_resize(img, S, self.mean, self.std)
        image[:, self.mask_lo:self.mask_hi, self.mask_lo:self.mask_hi] = 0
        vocab = self.tokenizer.vocab
        try:
            codes = torch.tensor(code_text.parse_codes(row["code"], self.num_codes, vocab.code_dict_size),
                                 dtype=torch.long)
        except code_text.CodeError as e:
            raise DataError(f"{e} (({self.cfg.code_image_size} / {self.cfg.vqgan_factor})^2 codes a row)",
                            field="code") from None
        return self._extra(self.source(IMAGE_PROMPT), codes + vocab.code_start, image, True, row.get("uniq_id"),
                           code_mask=True)

    def detection_example(self, row, key):
        img = self.image(row["image"])
        boxes, labels = [], []
        for box, _, name in parse_detection_boxes(row["boxes"], size=img.size):
            boxes.append(box)
            labels.append(name)
        rng = self.rng(-1, "det" + key)
        if rng.random() < 0.5:
            img, boxes = hflip(img, boxes)
        img, boxes, keep = large_scale_jitter(img, boxes, self.extra_size, rng, 1.0, self.cfg.detection_scale_max)
        image = to_tensor(img, self.mean, self.std)
        parts: List[torch.Tensor] = []
        for box, k in zip(boxes, keep):
            parts += [self.encode(self.bins(box)), self.encode(" " + labels[k])]
        tgt = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return self._extra(self.source(DETECTION_PROMPT), tgt, image, True, row.get("uniq_id"))


def _np_rng(rng: random.Random):
    import numpy as np

    return np.random.default_rng(rng.getrandbits(64))


def pretrain_row_counts(ds: UnifyDataset) -> Tuple[int, int]:
    """(V-L examples, extra examples) one epoch produces (for logs and tests)."""
    n = len(ds)
    blocks = sum(1 for i in range(n) if ds.has_extras(i))
    c = ds.cfg
    per_block = (c.text_per_block * (ds.text_reader is not None) + c.image_per_block * (ds.image_reader is not None)
                 + c.detection_per_block * (ds.detection_reader is not None))
    return 2 * n if ds.is_train else n, blocks * per_block
