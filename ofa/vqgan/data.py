"""Images for the tokenizer: from a folder of image files or from official TSV / HDF5 shards.

TSV rows are read with ``data_utils.readers.open_reader`` and images decoded with
``data_utils.images.decode_b64`` (HDF5 shards hold raw bytes: ``decode_bytes``). The image column is
taken from ``schema`` (e.g. ``caption``: the ``image`` column) or ``column`` (name or index); with
neither, it is the first field of the first row that decodes as an image. Rows that repeat an image
(``caption_train.tsv`` lists each image once per caption) are dropped by default.

Preprocessing (``prepare``): RGB, resize the shorter side to ``image_size`` (bicubic), centre crop to
``image_size`` x ``image_size``. Images are kept as uint8 [N, 3, S, S]; ``to_model_range`` maps them
to [-1, 1] floats (OFA's ``preprocess_vqgan``: ``2 * x - 1`` of [0, 1] pixels).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ofa.data_utils.errors import DataError
from ofa.data_utils.images import decode_b64, decode_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def prepare(image: Image.Image, image_size: int) -> np.ndarray:
    """PIL image -> uint8 array [3, S, S]: shorter side resized to S (bicubic), centre crop."""
    image = image.convert("RGB")
    w, h = image.size
    scale = image_size / min(w, h)
    nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_model_range(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [-1, 1]."""
    return batch_u8.float().div(127.5).sub(1.0)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] [B, 3, H, W] -> uint8, as OFA's ``custom_to_pil`` (clamp, (x+1)/2, *255, truncate)."""
    return ((batch.detach().float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """One float [-1, 1] image [3, H, W] -> PIL RGB."""
    return Image.fromarray(to_uint8(image[None])[0].permute(1, 2, 0).cpu().numpy(), "RGB")


def list_image_files(folder: str) -> List[str]:
    out = []
    for root, _, files in os.walk(folder):
        out.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(out)


def _guess_image_field(fields) -> int:
    order = sorted(range(len(fields)), key=lambda i: -len(fields[i]))  # images are the long fields
    for i in order:
        if len(fields[i]) < 16:
            break
        try:
            if isinstance(fields[i], bytes):
                decode_bytes(fields[i])
            else:
                decode_b64(fields[i])
            return i
        except DataError:
            continue
    raise DataError("no field of the first row decodes as an image; pass --schema or --image-column")


def iter_images(path: str, schema: Optional[str] = None, column: Union[str, int, None] = None,
                dedupe: bool = True) -> Iterator[Tuple[str, Image.Image]]:
    """(id, PIL image) pairs from a folder, a single image file, or a TSV / HDF5 shard."""
    if os.path.isdir(path):
        for f in list_image_files(path):
            yield os.path.relpath(f, path), Image.open(f)
        return
    if path.lower().endswith(IMAGE_EXTENSIONS):
        yield os.path.basename(path), Image.open(path)
        return
    from ofa.data_utils.readers import open_reader

    if schema is None and column is None and not path.endswith((".h5", ".hdf5")):
        probe = open_reader(path)
        col: Union[str, int] = _guess_image_field(probe.read_row(0))
    elif column is None:
        col = "image"
    else:
        col = int(column) if isinstance(column, str) and column.isdigit() else column
    reader = open_reader(path, schema=schema, columns=[col])
    seen = set()
    for i in range(len(reader)):
        (field,) = reader[i]
        if dedupe:
            digest = hashlib.sha1(field if isinstance(field, bytes) else field.encode()).digest()
            if digest in seen:
                continue
            seen.add(digest)
        image = decode_bytes(field) if isinstance(field, bytes) else decode_b64(field)
        yield f"{os.path.basename(path)}:{reader.global_index(i)}", image


def load_images(path: str, image_size: int, max_images: Optional[int] = None, schema: Optional[str] = None,
                column: Union[str, int, None] = None, dedupe: bool = True) -> Tuple[torch.Tensor, List[str]]:
    """uint8 [N, 3, S, S] tensor of prepared images and their ids."""
    arrays, ids = [], []
    for ident, image in iter_images(path, schema=schema, column=column, dedupe=dedupe):
        arrays.append(prepare(image, image_size))
        ids.append(ident)
        if max_images is not None and len(arrays) >= max_images:
            break
    if not arrays:
        raise DataError("no images found", path)
    return torch.from_numpy(np.stack(arrays)), ids
