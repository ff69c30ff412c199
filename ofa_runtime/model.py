"""An ONNX export (``ofa-export onnx``) opened with onnxruntime: the encoder and one decoder step.

Shapes (``B`` samples, ``N`` hypothesis rows, ``T`` encoder positions, ``H`` heads, ``dh`` head width,
``t`` decoded positions):

- ``encode(src_tokens [B, L] int64, patch_images [B, 3, S, S] float32, patch_masks [B] bool)`` -> ``EncoderState`` (the padding
  mask ``[B, T]``, the cross-attention position keys ``[B, H, dh, T]`` and the cross-attention cache
  ``[B, H, T, dh]`` of every decoder layer);
- ``step(tokens [N, 1], encoder, past)`` -> ``(logits [N, V] float32, present)``, ``past`` / ``present`` the
  self-attention cache, a list of ``[N, H, t, dh]`` arrays (``t + 1`` in ``present``).

No torch, no fairseq: numpy and onnxruntime only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ONNX_CONFIG = "onnx_config.json"
GENERATION = "generation.json"


class ExportError(ValueError):
    """The folder is not a usable ONNX export (one line naming the file and what is wrong)."""


@dataclass
class EncoderState:
    """What the decoder steps read from the source, one row per sample or per hypothesis."""

    padding_mask: np.ndarray  # bool [rows, T]
    cross_pos_k: np.ndarray  # [rows, H, dh, T]
    cross: List[np.ndarray]  # [rows, H, T, dh], layer-major k, v

    @property
    def rows(self) -> int:
        return self.padding_mask.shape[0]

    def take(self, rows: np.ndarray) -> "EncoderState":
        """The state with the rows ``rows`` (repeats, reorders or drops rows)."""
        return EncoderState(self.padding_mask[rows], self.cross_pos_k[rows], [c[rows] for c in self.cross])


def read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (is {os.path.dirname(path)} an `ofa-export onnx` folder?)") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


class OnnxModel:
    """The two graphs of an export folder.

    Args:
        export_dir: the folder ``ofa-export onnx`` wrote.
        providers: onnxruntime execution providers (default the CPU).
        threads: intra-op threads (default onnxruntime's choice).
    """

    def __init__(self, export_dir: str, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
        import onnxruntime as ort

        self.dir = export_dir
        self.config = read_json(os.path.join(export_dir, ONNX_CONFIG))
        if self.config.get("format") != "ofa-onnx":
            raise ExportError(f"{os.path.join(export_dir, ONNX_CONFIG)}: format is {self.config.get('format')!r}, "
                              f"expected 'ofa-onnx'")
        gen_path = os.path.join(export_dir, GENERATION)
        self.generation = read_json(gen_path) if os.path.isfile(gen_path) else {}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])
        sessions = []
        for key in ("encoder", "decoder_step"):
            path = os.path.join(export_dir, self.config[key])
            if not os.path.isfile(path):
                raise ExportError(f"{path}: not found (the export is incomplete)")
            sessions.append(ort.InferenceSession(path, options, providers=providers))
        self.encoder, self.decoder = sessions
        c = self.config
        self.num_layers = int(c["decoder_layers"])
        self.num_heads = int(c["decoder_attention_heads"])
        self.head_dim = int(c["head_dim"])
        self.vocab_size = int(c["vocab_size"])
        self.bos, self.pad, self.eos, self.unk = (int(c[k]) for k in ("bos", "pad", "eos", "unk"))
        self.image_size = int(c["image_size"])

    def tokenizer(self):
        """The export's tokenizer (``ofa_runtime.text.Tokenizer``)."""
        from ofa_runtime.text import Tokenizer

        return Tokenizer(self.dir, int(self.config.get("code_dict_size", 8192)), int(self.config.get("num_bins", 1000)))

    def preprocess(self, images) -> np.ndarray:
        """Image files or PIL images -> the encoder's ``patch_images`` float32 ``[B, 3, S, S]``."""
        from ofa_runtime.text import preprocess_image

        mean, std = self.config.get("image_mean", (0.5,) * 3), self.config.get("image_std", (0.5,) * 3)
        return np.stack([preprocess_image(im, self.image_size, mean, std) for im in images])

    def encode(self, src_tokens: np.ndarray, patch_images: np.ndarray,
               patch_masks: Optional[np.ndarray] = None) -> EncoderState:
        """Run the encoder graph on a batch (``src_tokens`` right-padded with ``pad``; ``patch_masks`` False for
        samples without an image, whose ``patch_images`` rows are then ignored; default all True)."""
        src_tokens = np.ascontiguousarray(src_tokens, dtype=np.int64)
        patch_images = np.ascontiguousarray(patch_images, dtype=np.float32)
        if patch_images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"the export takes {self.image_size} x {self.image_size} images, got "
                             f"{patch_images.shape[-2]} x {patch_images.shape[-1]}")
        if patch_masks is None:
            patch_masks = np.ones(src_tokens.shape[0], dtype=bool)
        feeds = {"src_tokens": src_tokens, "patch_images": patch_images,
                 "patch_masks": np.ascontiguousarray(patch_masks, dtype=bool)}
        out = self.encoder.run(None, feeds)
        return EncoderState(out[1], out[2], list(out[3:]))

    def empty_cache(self, rows: int) -> List[np.ndarray]:
        """A self-attention cache of zero positions for ``rows`` rows."""
        return [np.zeros((rows, self.num_heads, 0, self.head_dim), np.float32) for _ in range(2 * self.num_layers)]

    def step(self, tokens: np.ndarray, encoder: EncoderState, past: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """One decoding step for every row: the next-token logits and the cache grown by one position."""
        feeds = [np.ascontiguousarray(tokens, dtype=np.int64), encoder.padding_mask, encoder.cross_pos_k,
                 *encoder.cross, *past]
        out = self.decoder.run(None, dict(zip(self.config["decoder_inputs"], feeds)))
        return out[0], list(out[1:])
