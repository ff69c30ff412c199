"""Drawing predictions on images (Pillow): a labelled box, and a text banner across the top.

Pure drawing primitives, shared by the tasks' ``InferenceSpec.draw`` functions (``ofa-predict --draw``,
``ofa.inference.draw_result``). Boxes are ``[x0, y0, x1, y1]`` in pixels of the image being drawn on,
origin top-left; coordinates may be in any order and outside the image.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

BOX_COLOR = (0, 255, 0)
Color = Tuple[int, int, int]


def font(size: int):
    """Pillow's default font at ``size`` pixels (its bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _scale(img) -> Tuple[int, int]:
    """``(font size, line width)`` for an image of this size."""
    w, h = img.size
    return max(10, min(w, h) // 24), max(2, round(min(w, h) / 150))


def draw_box(img, box: Sequence[float], text: Optional[str] = None, color: Color = BOX_COLOR) -> None:
    """Draw ``box`` on ``img`` (in place): a bright outline over a dark halo (visible on light and dark images
    alike; boxes thinner than the outline are widened to stay visible) and, when given, ``text`` in a tag
    above the box (below it when there is no room above)."""
    from PIL import ImageDraw

    w, h = img.size
    draw = ImageDraw.Draw(img)
    size, line = _scale(img)
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    grow = max(0.0, 2 * line - (x1 - x0)) / 2, max(0.0, 2 * line - (y1 - y0)) / 2
    x0, x1, y0, y1 = x0 - grow[0], x1 + grow[0], y0 - grow[1], y1 + grow[1]
    draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(0, 0, 0), width=line + 2)
    draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
    if not text:
        return
    f = font(size)
    tb = draw.textbbox((0, 0), text, font=f)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    ty = y0 - th - 3 * line if y0 - th - 3 * line >= 0 else min(y1 + line + 1, max(h - th - 2 * line, 0))
    tx = min(max(x0, 0), max(w - tw - 2 * line, 0))
    draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=color, outline=(0, 0, 0))
    draw.text((tx + line - tb[0], ty + line - tb[1]), text, fill=(0, 0, 0), font=f)


def draw_banner(img, text: str) -> None:
    """Write ``text`` in white on a black band across the top of ``img`` (in place)."""
    from PIL import ImageDraw

    w, _ = img.size
    draw = ImageDraw.Draw(img)
    size, line = _scale(img)
    f = font(size)
    tb = draw.textbbox((0, 0), text, font=f)
    th = tb[3] - tb[1]
    draw.rectangle([0, 0, w, th + 2 * line], fill=(0, 0, 0))
    draw.text((line - tb[0], line - tb[1]), text, fill=(255, 255, 255), font=f)
