"""Discrete image tokenizer (VQGAN) for OFA's image codes (``<code_i>`` tokens).

- ``model``: ``VQGAN`` / ``VQGANConfig`` (encoder, decoder, gumbel / vq / ema quantizers);
  ``encode(images) -> codes [B, H/f, W/f]``, ``decode(codes) -> images``.
- ``convert``: read the official taming-transformers / OFA checkpoint (``last.ckpt`` + ``model.yaml``)
  safely and strictly, and write that format; ``open_vqgan`` loads a checkpoint file or the folder
  holding one.
- ``train`` / ``cli``: ``ofa-vqgan train | eval | encode | decode | info``.
- ``metrics``: PSNR and SSIM in torch.
"""
from ofa.vqgan.convert import (CheckpointFormatError, find_vqgan, load_official, load_vqgan, open_vqgan, read_state_dict,
                               save_official)
from ofa.vqgan.model import VQGAN, VQGANConfig, codebook_stats


def codes_to_tokens(codes, code_offset: int = 50265):
    """Codes -> OFA token ids (``<code_c>`` = ``code_offset + c``; 50265 for the English vocabulary,
    in general ``len(dict) - code_dict_size - num_bins``)."""
    return codes + code_offset


def tokens_to_codes(tokens, code_offset: int = 50265):
    return tokens - code_offset


__all__ = ["VQGAN", "VQGANConfig", "codebook_stats", "CheckpointFormatError", "find_vqgan", "load_official", "load_vqgan",
           "open_vqgan", "read_state_dict", "save_official", "codes_to_tokens", "tokens_to_codes"]
