"""Image-code text: the one parser of the ``code`` column, the code TSVs and ``ofa-vqgan decode`` input.

A code string holds VQGAN codebook indices of one image, row-major over its code grid, separated by
white space: integers (``"12 7 8191"``, the official ``image_gen`` / pretraining column) or tokens
(``"<code_12> <code_7>"``, as ``ofa-vqgan encode --tokens`` writes them).

``parse_codes`` raises ``CodeError`` (a ``ValueError``) with a message that names the offending token
or count; the callers add where the text came from (``DataError`` with file, row and field in the
data layer, ``file line N`` in the command line).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from ofa.errors import UserError

TOKEN_PREFIX, TOKEN_SUFFIX = "<code_", ">"


class CodeError(UserError, ValueError):
    """A malformed code string (the message says which token or count)."""


def _one(token: str) -> int:
    digits = token[len(TOKEN_PREFIX):-len(TOKEN_SUFFIX)] \
        if token.startswith(TOKEN_PREFIX) and token.endswith(TOKEN_SUFFIX) else token
    if not (digits.isascii() and digits.isdigit()):  # str.isdigit alone takes "²", which int() refuses
        raise CodeError(f"image code {token!r} is not a non-negative integer or a <code_i> token")
    return int(digits)


def parse_codes(text: str, expected: Optional[int] = None, vocab_size: Optional[int] = None) -> List[int]:
    """``"12 7 8191"`` or ``"<code_12> <code_7>"`` -> ``[12, 7, 8191]``.

    ``expected``: the exact number of codes (the code grid's size), checked when given;
    ``vocab_size``: every code must lie in ``[0, vocab_size)`` (the codebook), checked when given.
    """
    codes = [_one(t) for t in text.split()]
    if expected is not None and len(codes) != expected:
        raise CodeError(f"{len(codes)} image codes, expected {expected}")
    if vocab_size is not None and codes and max(codes) >= vocab_size:
        raise CodeError(f"image codes must lie in [0, {vocab_size}), got [{min(codes)}, {max(codes)}]")
    return codes


def code_grid(count: int, grid: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """``(h, w)`` of the code grid that ``count`` codes fill: ``grid`` when given, else the square one.

    Raises ``CodeError`` when the codes do not fill it (e.g. 63 codes, or 64 codes for a 4x8 grid).
    """
    h, w = grid if grid is not None else (math.isqrt(count), math.isqrt(count))
    if h * w != count or count == 0:
        raise CodeError(f"{count} image codes do not fill a {'square' if grid is None else f'{h}x{w}'} code grid")
    return h, w
