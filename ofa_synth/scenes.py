"""Rendering of synthetic scenes: 2-4 flat-coloured shapes on a light textured background.

Box convention (used by every file this package writes): ``x0,y0,x1,y1`` in pixels of the image,
origin at the top-left corner, x to the right and y downwards, pixel-edge coordinates. The box is the
tight box of the object's *visible* pixels: pixel columns ``x0 .. x1-1`` and rows ``y0 .. y1-1`` hold
the object, so ``0 <= x0 < x1 <= width`` (the official ``x0,y0,x1,y1`` = left, top, right, bottom).

Objects are drawn without anti-aliasing in their exact palette colour (plus a small per-object shade
jitter), so their pixels can be recovered from the image. Each object stays at least
``MIN_VISIBLE`` visible after occlusion by the objects drawn over it, and the "main" object (the
image-classification label) has clearly the largest visible area. Objects of one colour never touch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ofa_synth.vocab import COLOR_NAMES, COLORS, SHAPES, Combo

MIN_VISIBLE = 0.65        # a bit above the required 60 % so that edge pixels never tip it under
MAIN_AREA_RATIO = 1.15    # main object's visible area / any other object's visible area
LARGE_EXTENT = (0.30, 0.36)  # object extent as a fraction of the image side
SMALL_EXTENT = (0.14, 0.18)
# drawn area / extent**2 of each shape (see ``shape_polygon``)
AREA_FACTOR = {"circle": math.pi / 4, "square": 0.85 ** 2, "triangle": 0.433, "diamond": 0.375, "star": 0.33}
BACKGROUNDS = ("plain", "gradient", "stripes", "noise")
BACKGROUND_WORDS = {"plain": "plain", "gradient": "shaded", "stripes": "striped", "noise": "noisy"}


@dataclass
class Obj:
    """One drawn object. ``box`` is the tight box of its visible pixels (see the module docstring)."""
    color: str
    shape: str
    size: str                 # "small" or "large"
    rgb: Tuple[int, int, int]
    cx: float                 # geometric centre and extent (bounding size) in pixels, as drawn
    cy: float
    extent: float
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)
    area: int = 0             # visible pixels
    visible: float = 1.0      # visible fraction of its drawn pixels

    @property
    def combo(self) -> Combo:
        return (self.color, self.shape)

    @property
    def center(self) -> Tuple[float, float]:
        """Centre of the visible box: what positional words ("left", "above") are judged by."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def to_json(self) -> Dict:
        return {"color": self.color, "shape": self.shape, "size": self.size, "box": list(self.box),
                "area": self.area, "visible": round(self.visible, 4)}


@dataclass
class Scene:
    """Objects in drawing order (later ones cover earlier ones); ``main`` indexes the labelled object."""
    width: int
    height: int
    background: str
    objects: List[Obj] = field(default_factory=list)
    main: int = 0

    @property
    def bg_words(self) -> str:
        return BACKGROUND_WORDS[self.background]

    def to_json(self) -> Dict:
        return {"width": self.width, "height": self.height, "background": self.background, "main": self.main,
                "objects": [o.to_json() for o in self.objects]}

    @classmethod
    def from_json(cls, d: Dict) -> "Scene":
        """The scene that ``to_json`` wrote, as far as the texts need it (attributes and visible boxes;
        colour values and the drawn centres / extents are taken from the boxes, so it cannot be re-rendered)."""
        objs = []
        for o in d["objects"]:
            x0, y0, x1, y1 = o["box"]
            objs.append(Obj(o["color"], o["shape"], o["size"], (0, 0, 0), (x0 + x1) / 2.0, (y0 + y1) / 2.0,
                            float(max(x1 - x0, y1 - y0)), tuple(o["box"]), o.get("area", 0), o.get("visible", 1.0)))
        return cls(d["width"], d["height"], d["background"], objs, d.get("main", 0))


# ---------------------------------------------------------------------------------------------- shapes

def shape_polygon(shape: str, cx: float, cy: float, d: float) -> Optional[List[Tuple[float, float]]]:
    """Vertices of ``shape`` with centre (cx, cy) and extent ``d``; ``None`` for the circle (an ellipse)."""
    r = d / 2.0
    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        h = d * 0.866 / 2.0
        return [(cx, cy - h), (cx + r, cy + h), (cx - r, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang) + r * 0.08))
        return pts
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    poly = shape_polygon(obj.shape, obj.cx, obj.cy, obj.extent)
    if poly is None:
        r = obj.extent / 2.0
        draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def shape_mask(obj: Obj, width: int, height: int) -> np.ndarray:
    img = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(img), obj, 255)
    return np.asarray(img) > 0


# ----------------------------------------------------------------------------------------- backgrounds

def _light_color(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(212, 242)
    return np.clip(base + rng.uniform(-12, 12, size=3), 190, 250)


def render_background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A light, unsaturated H x W x 3 uint8 texture (every channel >= 170)."""
    c1, c2 = _light_color(rng), _light_color(rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "plain":
        out = np.broadcast_to(c1, (height, width, 3)).astype(np.float32)
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(ang) + ys * math.sin(ang)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        out = c1 + (c2 - c1) * t[..., None]
    elif kind == "stripes":
        period = rng.uniform(6, 16)
        ang = rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4])
        t = xs * math.cos(ang) + ys * math.sin(ang)
        band = (np.floor(t / (period / 2)) % 2)[..., None]
        out = c1 * (1 - band) + c2 * band
    elif kind == "noise":
        # one-channel blotches (quantised) plus sparse specks: textured, yet cheap to store as PNG
        coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(((coarse + 4) * 32).clip(0, 255).astype(np.uint8)).resize(
            (width, height), Image.BILINEAR), dtype=np.float32) / 32 - 4
        specks = (rng.random(size=(height, width)) < 0.03) * rng.uniform(-14, 14)
        out = c1 + (np.round(3.0 * smooth) * 3.0 + specks)[..., None]
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.clip(out, 170, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- sampling

def _pick_attrs(rng: np.random.Generator, allowed: Sequence[Combo], objs: List[Tuple[str, str, str]]):
    """Colour and shape of a new object; half the time it shares the colour or shape of an earlier one
    so that referring expressions have distractors to tell apart."""
    if objs and rng.random() < 0.55:
        ref = objs[int(rng.integers(len(objs)))]
        keep = "color" if rng.random() < 0.5 else "shape"
        pool = [c for c in allowed if (c[0] == ref[0] if keep == "color" else c[1] == ref[1])]
        if pool:
            return pool[int(rng.integers(len(pool)))]
    return allowed[int(rng.integers(len(allowed)))]


def sample_scene(rng: np.random.Generator, width: int, height: int, allowed: Sequence[Combo],
                 main_combo: Optional[Combo] = None) -> Scene:
    """Choose objects and positions (by rejection) that meet the visibility and main-object rules.

    Args:
        allowed: the (colour, shape) pairs the objects may take.
        main_combo: the combo of the main (largest, labelled) object; random from ``allowed`` if None.
    """
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    n = int(rng.integers(2, 5))
    attrs: List[Tuple[str, str, str]] = []
    main = main_combo or allowed[int(rng.integers(len(allowed)))]
    attrs.append((main[0], main[1], "large"))
    for _ in range(n - 1):
        c, s = _pick_attrs(rng, allowed, attrs)
        # a second large object must be able to stay clearly smaller than the main one
        big_ok = AREA_FACTOR[s] * LARGE_EXTENT[0] ** 2 * MAIN_AREA_RATIO < AREA_FACTOR[main[1]] * LARGE_EXTENT[1] ** 2
        attrs.append((c, s, "large" if big_ok and rng.random() < 0.35 else "small"))
    order = [int(k) for k in rng.permutation(n)]  # drawing order; attrs[0] is the main object
    side = min(width, height)
    for attempt in range(300):
        if attempt in (60, 120):  # hard layouts: make the others small, then drop the last one
            attrs = [attrs[0]] + [(c, s, "small") for c, s, _ in attrs[1:]]
        if attempt in (180, 240) and len(attrs) > 2:
            attrs = attrs[:-1]
            order = [k for k in order if k < len(attrs)]
        objs = []
        for c, s, z in attrs:
            lo, hi = LARGE_EXTENT if z == "large" else SMALL_EXTENT
            d = float(rng.uniform(lo, hi)) * side
            m = d / 2 + 2
            rgb = tuple(min(255, max(0, v + j)) for v, j in zip(COLORS[c], rng.integers(-10, 11, size=3).tolist()))
            objs.append(Obj(c, s, z, rgb, float(rng.uniform(m, width - m)), float(rng.uniform(m, height - m)), d))
        # cheap tests first: same-colour objects apart, main object nominally the largest
        main_area = AREA_FACTOR[objs[0].shape] * objs[0].extent ** 2
        if _same_color_touch(objs) or any(AREA_FACTOR[o.shape] * o.extent ** 2 * MAIN_AREA_RATIO >= main_area
                                          for o in objs[1:]):
            continue
        drawn = [objs[k] for k in order]
        if _place(drawn, width, height):
            scene = Scene(width, height, background, drawn, main=order.index(0))
            if main_is_largest(scene):
                return scene
    raise RuntimeError("could not place the objects of a scene")  # pragma: no cover (two objects always fit)


def _same_color_touch(objs: List[Obj]) -> bool:
    """Whether two objects of one colour overlap or touch (they would merge into one blob)."""
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            if a.color == b.color:
                gap = (a.extent + b.extent) / 2 + 3
                if abs(a.cx - b.cx) < gap and abs(a.cy - b.cy) < gap:
                    return True
    return False


def _place(drawn: List[Obj], width: int, height: int) -> bool:
    """Compute visible boxes and areas (top-most object first); False if a rule is broken."""
    if _same_color_touch(drawn):
        return False
    covered = np.zeros((height, width), dtype=bool)
    for obj in reversed(drawn):
        mask = shape_mask(obj, width, height)
        total = int(mask.sum())
        vis = mask & ~covered
        obj.area = int(vis.sum())
        obj.visible = obj.area / max(total, 1)
        if obj.visible < MIN_VISIBLE:
            return False
        cols, rows = vis.any(axis=0), vis.any(axis=1)
        x0, y0 = int(cols.argmax()), int(rows.argmax())
        x1, y1 = width - int(cols[::-1].argmax()), height - int(rows[::-1].argmax())
        obj.box = (x0, y0, x1, y1)
        covered |= mask
    return True


def main_is_largest(scene: Scene) -> bool:
    m = scene.objects[scene.main].area
    return all(m >= MAIN_AREA_RATIO * o.area for k, o in enumerate(scene.objects) if k != scene.main)


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Background texture, then the objects in drawing order."""
    bg = render_background(scene.background, scene.width, scene.height, rng)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        draw_shape(draw, obj, obj.rgb)
    return img


def all_combos() -> List[Combo]:
    return [(c, s) for c in COLOR_NAMES for s in SHAPES]
