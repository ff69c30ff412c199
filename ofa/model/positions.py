"""Position bookkeeping for OFA: relative-position bucket tables and image position ids.

Pure functions, no parameters. Mirrors ``make_token_bucket_position`` /
``make_image_bucket_position`` and the decoder's ``image_position_idx`` buffer of the official
``models/ofa/unify_transformer.py`` (see ``docs/architecture.md`` sections 3.2, 3.5 and 4.2).

Conventions:
- Image patch at grid cell (row r, column c) has position id ``r * image_bucket_size + c + 1``:
  the row stride is always ``image_bucket_size`` (42), never the feature-map width, and id 0 is
  reserved for the "BOS" step of the image-code decoder.
- All tables are deterministic; checkpoints store them as buffers but we always rebuild them.
"""
from __future__ import annotations

import math

import torch

TOKEN_MAX_POSITION = 1024  # the official tables are always built for 1024 text positions
CODE_TAIL_LENGTH = 769  # official decoder pads image_position_idx with 769 copies of id 1024


def token_bucket_table(bucket_size: int = 256, max_position: int = TOKEN_MAX_POSITION) -> torch.Tensor:
    """Relative-position buckets for 1-D text.

    Args:
        bucket_size: number of buckets on each side (256 in every released model).
        max_position: sequence length the table covers.

    Returns:
        LongTensor ``[max_position, max_position]``; entry ``[i, j]`` is the bucket of
        ``i - j`` shifted into ``[0, 2 * bucket_size - 2]``. Distances up to ``bucket_size // 2``
        get their own bucket, larger ones share log-spaced buckets.
    """
    context = torch.arange(max_position, dtype=torch.long)[:, None]
    memory = torch.arange(max_position, dtype=torch.long)[None, :]
    relative = context - memory
    sign = torch.sign(relative)
    mid = bucket_size // 2
    # |rel| below mid is replaced by mid - 1 only to keep log() finite; those entries use rel itself.
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.full_like(relative, mid - 1), relative.abs())
    log_pos = (
        torch.ceil(torch.log(abs_pos.float() / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    ).long()
    bucket = torch.where(abs_pos.le(mid), relative, log_pos * sign)
    return bucket + bucket_size - 1


def image_bucket_table(bucket_size: int = 42) -> torch.Tensor:
    """Relative-position buckets for 2-D image patches.

    Args:
        bucket_size: side of the position grid (42 in every released model).

    Returns:
        LongTensor ``[bucket_size**2 + 1, bucket_size**2 + 1]`` indexed by two position ids (see
        module docstring). For ids >= 1 the bucket encodes ``(dr + S - 1) * (2S - 1) + (dc + S - 1)``
        with ``dr, dc`` the row/column offsets of query minus key. Row 0 holds ``n - 3``, column 0
        ``n - 2`` and ``[0, 0]`` ``n - 1``, where ``n = (2S - 1)**2 + 3`` is the table size.
    """
    num_rel = (2 * bucket_size - 1) ** 2 + 3
    coords = torch.stack(
        torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij")
    ).flatten(1)  # [2, S*S]: (row, col) of each cell in row-major order
    rel = coords[:, :, None] - coords[:, None, :]  # [2, S*S, S*S]
    rel = rel + (bucket_size - 1)
    index = rel[0] * (2 * bucket_size - 1) + rel[1]
    table = torch.zeros(bucket_size * bucket_size + 1, bucket_size * bucket_size + 1, dtype=torch.long)
    table[1:, 1:] = index
    table[0, :] = num_rel - 3
    table[:, 0] = num_rel - 2
    table[0, 0] = num_rel - 1
    return table


def patch_position_ids(height: int, width: int, bucket_size: int = 42) -> torch.Tensor:
    """Position ids of an ``height x width`` feature map flattened row-major.

    Returns:
        LongTensor ``[height * width]`` with ``r * bucket_size + c + 1``.
    """
    if height > bucket_size or width > bucket_size:
        raise ValueError(
            f"image grid {height}x{width} exceeds the {bucket_size}x{bucket_size} position grid; "
            f"use a patch_image_size of at most {bucket_size * 16}"
        )
    rows = torch.arange(height)[:, None] * bucket_size
    cols = torch.arange(width)[None, :]
    return (rows + cols + 1).flatten()


def code_position_ids(code_image_size: int = 128, bucket_size: int = 42) -> torch.Tensor:
    """The decoder's ``image_position_idx`` buffer used when generating image codes.

    Step 0 (BOS) gets position 0, code k (row-major in a ``window x window`` grid,
    ``window = code_image_size // 8``) gets its grid id, and every later step gets id 1024
    (the official buffer appends 769 such entries).

    Returns:
        LongTensor ``[1 + window**2 + 769]``.
    """
    window = code_image_size // 8
    grid = patch_position_ids(window, window, bucket_size)
    tail = torch.full((CODE_TAIL_LENGTH,), 1024, dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), grid, tail])
