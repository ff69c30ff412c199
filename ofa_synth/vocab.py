"""The closed world of the synthetic benchmark: colours, shapes, sizes, answers and class names.

Everything a generated text can say is built from these lists, so the answer vocabulary and the class
list are fixed by the code (not by the data) and are identical for every seed and every split.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

# saturated object colours (RGB); backgrounds are light and unsaturated, far from all of these
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (34, 160, 60),
    "blue": (31, 90, 210),
    "yellow": (235, 200, 20),
    "purple": (140, 60, 180),
    "orange": (245, 120, 10),
}
COLOR_NAMES: Tuple[str, ...] = tuple(COLORS)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZES: Tuple[str, ...] = ("small", "large")

# words a human annotator might use instead of ours (VQA answer noise)
COLOR_SYNONYMS = {"purple": "violet", "orange": "dark orange", "blue": "dark blue", "green": "dark green"}
SHAPE_SYNONYMS = {"circle": "ball", "square": "box", "diamond": "rhombus", "star": "star shape",
                  "triangle": "pyramid"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
MAX_COUNT = 4  # at most four objects per image

Combo = Tuple[str, str]  # (colour, shape)


def plural(shape: str) -> str:
    return shape + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def class_names() -> List[str]:
    """Image classes: the colour and shape of the largest visible object, e.g. ``"red circle"``."""
    return [f"{c} {s}" for c in COLOR_NAMES for s in SHAPES]


def answer_vocabulary() -> List[str]:
    """Every answer a VQA row can hold (true answers, wrong ones and synonyms), in a fixed order."""
    answers = ["yes", "no", "left", "right", "top", "bottom", "left side", "right side", "up", "down"]
    answers += list(COLOR_NAMES) + [v for v in COLOR_SYNONYMS.values()]
    answers += list(SHAPES) + [v for v in SHAPE_SYNONYMS.values()]
    answers += [str(n) for n in range(MAX_COUNT + 2)] + list(NUMBER_WORDS[: MAX_COUNT + 2])
    seen, out = set(), []
    for a in answers:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out
