"""Text-to-image samples from ``image_gen`` rows (docs/tasks.md 1.1 and 2.6).

A row is ``(uniq_id, code, caption)``: ``code`` holds ``(code_image_size / vqgan_factor) ** 2``
space-separated VQGAN codes of the image (row-major over the code grid), ``caption`` the text.

One example::

    source  = [bos] + encode(" what is the complete image? caption: {pre_caption(caption)}") + [eos]
    prev    = [bos] + (codes + code_start)            # [N + 1], N = number of codes
    target  = (codes + code_start) + [eos]             # [N + 1]
    code_mask = True (decoder image positions), patch_mask = False (a zero placeholder image)

Batches are those of ``OFADataset.collater`` plus ``net_input["code_masks"]`` bool ``[B]`` (all True),
``codes`` LongTensor ``[B, N]`` (the reference codes; ``None`` when the rows carry none), and
``captions`` (the cleaned captions, ``[B]`` strings).

Outside training a row may leave ``code`` empty (generation from a caption only, as the official
2-column inference files); the target is then ``[eos]`` alone. Any other code count, a non-integer
or a code outside ``[0, code_vocab_size)`` raises ``DataError`` naming the file, row and ``code``.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ofa.data_utils import codes as code_text
from ofa.data_utils.datasets import DataConfig, OFADataset
from ofa.data_utils.errors import DataError
from ofa.data_utils.text import pre_caption

PROMPT = " what is the complete image? caption: {}"


@dataclass
class ImageGenDataConfig(DataConfig):
    """``DataConfig`` plus the code grid: ``code_image_size / vqgan_factor`` codes per side."""

    code_image_size: int = 256
    vqgan_factor: int = 8
    code_vocab_size: int = 8192  # codes in [0, code_vocab_size) are valid (VQGAN codebook size)


def parse_codes(text: str, expected: int, vocab_size: int) -> torch.Tensor:
    """``"3 17 5 ..."`` -> LongTensor ``[expected]``; ``DataError`` (field ``code``) when malformed."""
    try:
        return torch.tensor(code_text.parse_codes(text, expected, vocab_size), dtype=torch.long)
    except code_text.CodeError as e:
        raise DataError(str(e), field="code") from None


class ImageGenDataset(OFADataset):
    """Caption -> image codes (+ EOS), decoded at image positions (``code_mask`` True)."""

    columns = ("uniq_id", "code", "caption")

    def __init__(self, reader, tokenizer, cfg: ImageGenDataConfig, split: str = "train"):
        super().__init__(reader, tokenizer, cfg, split)
        if cfg.code_image_size % cfg.vqgan_factor:
            raise ValueError(f"code_image_size {cfg.code_image_size} is not a multiple of the VQGAN factor "
                             f"{cfg.vqgan_factor}")
        self.grid = cfg.code_image_size // cfg.vqgan_factor
        self.num_codes = self.grid * self.grid
        self.code_start = tokenizer.vocab.code_start
        if cfg.code_vocab_size > tokenizer.vocab.code_dict_size:
            raise ValueError(f"code_vocab_size {cfg.code_vocab_size} exceeds the dictionary's "
                             f"{tokenizer.vocab.code_dict_size} <code_i> tokens")

    def num_tokens(self, index: int) -> int:
        return self.num_codes + 1

    def build(self, row: Dict[str, Any]) -> Dict[str, Any]:
        caption = pre_caption(str(row["caption"]), self.cfg.max_src_length)
        if not caption:
            raise DataError("empty caption", field="caption")
        src = self.source(PROMPT.format(caption))
        text = str(row["code"]).strip()
        if not text and not self.is_train:
            codes, tgt = None, torch.zeros(0, dtype=torch.long)
        else:
            codes = parse_codes(text, self.num_codes, self.cfg.code_vocab_size)
            tgt = codes + self.code_start
        return self.example(src, tgt, None, uniq_id=row["uniq_id"], code_mask=True, codes=codes, caption=caption)

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        samples = [s for s in samples if s is not None]
        batch = super().collater(samples)
        if not batch:
            return batch
        batch["net_input"]["code_masks"] = torch.ones(len(samples), dtype=torch.bool)
        have = [s["codes"] is not None for s in samples]
        batch["codes"] = torch.stack([s["codes"] for s in samples]) if all(have) else None
        batch["captions"] = [s["caption"] for s in samples]
        return batch
