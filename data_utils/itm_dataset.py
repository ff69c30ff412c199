"""Dataset of the ``image_text_match`` task: does a text describe an image (the pretraining ITM prompt as a task).

``ImageTextMatchDataset`` reads ``caption`` rows (``uniq_id, image, caption``). Each sample's source is the ITM
prompt of ``ofa.ranking`` with the row's caption (``' does the image describe " {text} "?'``, the text cleaned
by ``pre_caption(text, max_src_length)``), its target ``" yes"`` (packed as every answer target:
``prev_output_tokens = [bos] + answer``, ``target = answer + [eos]``, no decoder prompt), so the standard
``adjust_label_smoothed_cross_entropy`` criterion trains it.

Training rows hold one caption. Negatives are made in the collater (``with_negatives``): a seeded half of
the batch's rows (``B // 2`` of them; the seed is the epoch and the batch's row ids, so an epoch's batches are
the same again and a new epoch draws anew) take the caption of another row of the batch and the target
``" no"``. The donors follow a random cyclic permutation of the batch (Sattolo's algorithm: a derangement, no
row is its own donor); a donor whose text equals the row's own caption text, or whose image is the row's own
image (another caption of the same picture would be a false negative), is replaced by a random row that
differs in both; a row without such a row in its batch stays positive. **A batch of one row has no
negatives** (``--batch-size 1`` trains on positives only).

Evaluation rows hold one image with its references ``&&``-joined (the official caption val/test layout); the
source carries the first reference (for the validation loss). ``gather_candidates`` reads every row of the
split once: all references, in row order, are the candidate texts, and each row's own indices among them
are its positives, which its samples carry as ``refs``.

A batch is ``OFADataset.collater``'s (``net_input.src_tokens [B, L]``, ``patch_images [B, 3, S, S]``,
``prev_output_tokens [B, T]``, ``target [B, T]``, ...) plus ``texts`` (``[B]`` the cleaned text each source
holds), ``matches`` (bool ``[B]``: the target is ``" yes"``) and, on an evaluation split, ``refs`` (``[B]``
lists of candidate indices).

``FirstRows`` limits a reader to its file's first ``n`` rows (``--max-eval-images``).
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

import torch

from ofa.data_utils.datasets import OFADataset
from ofa.data_utils.errors import DataError
from ofa.data_utils.readers import _Sharded, locate
from ofa.data_utils.text import pre_caption
from ofa.data_utils.transforms import square_resize
from ofa.ranking import ITM_PROMPT

YES, NO = " yes", " no"


def split_references(field: str) -> List[str]:
    """The ``&&``-joined texts of a ``caption`` field, stripped, empty ones dropped."""
    return [t.strip() for t in field.split("&&") if t.strip()]


def derangement(n: int, rng: random.Random) -> List[int]:
    """A uniformly random cyclic permutation of ``range(n)`` (Sattolo's algorithm): ``perm[i] != i`` for
    every ``i`` when ``n >= 2``."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


class FirstRows(_Sharded):
    """The first ``n`` rows of an opened reader's file (all of them when it has fewer), in file order, sliced over
    the ranks as that reader is (same ``rank`` / ``world_size``; never shuffled). Rows are read, and errors
    located, by the wrapped reader."""

    def __init__(self, reader: _Sharded, n: int):
        if n < 1:
            raise ValueError(f"FirstRows needs n >= 1, got {n}")
        self.base, self.path = reader, reader.path
        self._init_sampling(min(n, reader.total), reader.rank, reader.world_size, False, reader.seed)

    @property
    def column_names(self):
        return self.base.column_names

    def read_row(self, g: int):
        return self.base.read_row(g)

    def line_number(self, g: int) -> Optional[int]:
        return self.base.line_number(g)


class ImageTextMatchDataset(OFADataset):
    """``' does the image describe " {caption} "?'`` -> `` yes`` (and, made by the collater in training, another
    row's caption -> `` no``)."""

    columns = ("uniq_id", "image", "caption")

    def __init__(self, reader, tokenizer, cfg, split="train"):
        super().__init__(reader, tokenizer, cfg, split)
        # evaluation: global row -> indices of its references among the split's candidate texts
        self.positives: Optional[List[List[int]]] = None

    def gather_candidates(self) -> List[str]:
        """Read every row of the reader's file (global rows ``0 .. total - 1``): returns the candidate texts (every
        row's references, in row order) and keeps each row's own indices among them in ``positives``, which
        the samples then carry as ``refs``. A row that cannot be read adds no candidates under ``--bad-rows
        skip`` (its sample is skipped and counted when it is read), else it is a ``DataError``."""
        reader = self.reader
        column = self._pos[self.columns.index("caption")]
        texts: List[str] = []
        positives: List[List[int]] = []
        for g in range(reader.total):
            try:
                refs = split_references(reader.read_row(g)[column])
            except DataError as e:
                if self.cfg.bad_rows != "skip":
                    raise locate(e, reader, g) from None
                refs = []
            positives.append(list(range(len(texts), len(texts) + len(refs))))
            texts.extend(refs)
        self.positives = positives
        return texts

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        example = super().__getitem__(index)
        if example is not None and self.positives is not None:
            example["refs"] = self.positives[self.reader.global_index(index)]
        return example

    def build(self, row):
        texts = [pre_caption(t, self.cfg.max_src_length) for t in split_references(row["caption"])]
        texts = [t for t in texts if t]
        if not texts:
            raise DataError("empty caption", field="caption")
        image = square_resize(self.image(row["image"]), self.cfg.patch_image_size, self.mean, self.std)
        # training rows hold one caption; evaluation rows give their first reference to the validation loss
        return self.example(self.source(ITM_PROMPT.format(texts[0])), self.encode(YES), image,
                            uniq_id=row["uniq_id"], text=texts[0], match=True, image_key=hash(row["image"]))

    # ---------------------------------------------------------------- negatives
    def with_negatives(self, samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """``samples`` with ``len(samples) // 2`` of them (seeded by the epoch and the row ids) turned into
        negatives: another row's caption in the source, ``" no"`` as target (see the module docstring). The
        given dicts are not changed."""
        n = len(samples)
        rng = random.Random(f"itm/{self.epoch}/" + ",".join(str(s["uniq_id"]) for s in samples))
        chosen = rng.sample(range(n), n // 2)
        donors = derangement(n, rng)

        def unrelated(i, j):
            return samples[j]["text"] != samples[i]["text"] and samples[j]["image_key"] != samples[i]["image_key"]

        out = list(samples)
        for i in sorted(chosen):
            donor = donors[i]
            if not unrelated(i, donor):
                others = [j for j in range(n) if unrelated(i, j)]
                if not others:
                    continue
                donor = rng.choice(others)
            text = samples[donor]["text"]
            src = self.source(ITM_PROMPT.format(text))
            out[i] = {**samples[i], "source": src, "text": text, "match": False,
                      **self.pack_target(src, self.encode(NO))}
        return out

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        samples = [s for s in samples if s is not None]
        if self.is_train and len(samples) > 1:
            samples = self.with_negatives(samples)
        batch = super().collater(samples)
        if batch:
            batch["texts"] = [s["text"] for s in samples]
            batch["matches"] = torch.tensor([s["match"] for s in samples], dtype=torch.bool)
        return batch
