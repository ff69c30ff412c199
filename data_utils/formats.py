"""Column layouts of the official OFA TSV files (docs/tasks.md 1.1), by name.

Each ``Schema`` lists the columns in file order. Readers select columns by these names (or by index,
the official ``--selected-cols`` style). Conventions kept from the official data:

- images: base64 of the encoded file bytes (PNG/JPEG), decoded with ``urlsafe_b64decode`` (which also
  accepts standard base64);
- lists: items joined with ``&&``;
- VQA answers: ``conf|!+answer`` items joined with ``&&``;
- boxes: ``x0,y0,x1,y1`` in pixels of the original image (left, top, right, bottom).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ofa.data_utils.errors import DataError
from ofa.errors import unknown_name


@dataclass(frozen=True)
class Schema:
    name: str
    columns: Tuple[str, ...]
    image_columns: Tuple[str, ...] = ("image",)

    def index(self, column: Union[str, int]) -> int:
        if isinstance(column, int):
            if not 0 <= column < len(self.columns):
                raise DataError(f"column index {column} out of range for {self.name} ({len(self.columns)} columns)")
            return column
        try:
            return self.columns.index(column)
        except ValueError:
            raise DataError(f"unknown column {column!r} for {self.name}; columns are {list(self.columns)}") from None


SCHEMAS: Dict[str, Schema] = {s.name: s for s in [
    Schema("caption", ("uniq_id", "image_id", "caption", "predicted_objects", "image")),
    Schema("refcoco", ("uniq_id", "image_id", "text", "region_coord", "image")),
    Schema("vqa", ("question_id", "image_id", "question", "answers", "predicted_objects", "image")),
    Schema("snli_ve", ("uniq_id", "image_id", "image", "hypothesis", "caption", "label")),
    Schema("image_classify", ("image", "label_index", "label_name")),
    Schema("image_gen", ("uniq_id", "code", "caption"), image_columns=()),
    Schema("pretrain_vl", ("uniq_id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type")),
    Schema("pretrain_text", ("uniq_id", "text"), image_columns=()),
    Schema("pretrain_image", ("uniq_id", "image", "code")),
    Schema("pretrain_detection", ("uniq_id", "image", "boxes")),
    Schema("text_pair", ("uniq_id", "source", "target"), image_columns=()),
    # finetuning detection reads the pretraining detection layout (uniq_id: the COCO image id where converted)
    Schema("detection", ("uniq_id", "image", "boxes")),
    # grounded captioning: the region's caption(s), ``&&``-joined references in evaluation files
    Schema("region_caption", ("uniq_id", "image_id", "caption", "region_coord", "image")),
]}
# official task names that read the same files
SCHEMAS["vqa_gen"] = SCHEMAS["vqa"]


def get_schema(name: str) -> Schema:
    """The layout called ``name``; an unknown name is a ``DataError`` suggesting the nearest."""
    if name not in SCHEMAS:
        raise DataError(unknown_name("data layout", name, sorted(SCHEMAS)))
    return SCHEMAS[name]


def resolve_columns(schema: Schema, selected: Sequence[Union[str, int]]) -> Tuple[int, ...]:
    """Column names or indices -> indices in file order."""
    return tuple(schema.index(c) for c in selected)


def parse_number(text: str, what: str, field: Optional[str] = None) -> float:
    """A finite decimal number (``nan`` / ``inf`` are refused), or ``DataError`` naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{what} {text.strip()!r} is not a number", field=field) from None
    if not math.isfinite(value):
        raise DataError(f"{what} {text.strip()!r} is not a finite number", field=field)
    return value


def parse_index(text: str, what: str, field: Optional[str] = None, minimum: int = 0) -> int:
    """An integer of ASCII digits ``>= minimum`` (``"3"``; not ``"3.0"``, ``"-1"`` or ``"³"``)."""
    digits = text.strip()
    if not digits.isascii() or not digits.isdigit() or int(digits) < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise DataError(f"{what} {text!r} is not {kind}", field=field)
    return int(digits)


def parse_answers(field: str, column: str = "answers") -> Dict[str, float]:
    """``"0.6|!+no&&1.0|!+yes"`` -> ``{"no": 0.6, "yes": 1.0}`` (the official ``conf|!+answer`` items; a
    confidence is a finite number in [0, 1], the VQA score ``min(1, count / 3)``); raises ``DataError``
    (field ``column``) on bad items."""
    out: Dict[str, float] = {}
    for item in field.split("&&"):
        if "|!+" not in item:
            raise DataError(f"answer item {item!r} is not 'confidence|!+answer'", field=column)
        conf, answer = item.split("|!+", 1)
        value = parse_number(conf, "answer confidence", column)
        if not 0.0 <= value <= 1.0:
            raise DataError(f"answer confidence {conf.strip()!r} of {answer!r} is outside [0, 1]", field=column)
        if not answer.strip():
            raise DataError(f"answer item {item!r} has an empty answer", field=column)
        out[answer] = value
    return out


def format_answers(answers: Dict[str, float]) -> str:
    return "&&".join(f"{conf:.6g}|!+{ans}" for ans, conf in answers.items())


def check_box(box: Sequence[float], text: str, field: str = "region_coord") -> Tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` with ``x0 < x1`` and ``y0 < y1`` (a box with an area), or ``DataError``."""
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise DataError(f"box {text!r} is not in x0,y0,x1,y1 order with x0 < x1 and y0 < y1", field=field)
    return x0, y0, x1, y1


def parse_box(field: str, column: str = "region_coord") -> Tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> floats: four finite numbers with x0 < x1 and y0 < y1."""
    parts = field.split(",")
    if len(parts) != 4:
        raise DataError(f"box {field!r} must have 4 comma-separated numbers (x0,y0,x1,y1)", field=column)
    return check_box([parse_number(p, f"box {field!r}: coordinate", column) for p in parts], field, column)


def box_inside(box: Sequence[float], size: Tuple[int, int], text: str, field: str = "region_coord") -> None:
    """``DataError`` unless ``box`` lies inside a ``w x h`` image (one pixel of slack on the right and bottom,
    for ``x + w`` rounding of COCO boxes)."""
    w, h = size
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > w + 1 or y1 > h + 1:
        raise DataError(f"box {text!r} is outside the {w}x{h} image", field=field)


Box = Tuple[float, float, float, float]


def parse_detection_boxes(field: str, column: str = "boxes",
                          size: Optional[Tuple[int, int]] = None) -> List[Tuple[Box, int, str]]:
    """``"x0,y0,x1,y1,cat_id,cat_name&&..."`` (pretraining detection) -> ``[(box, cat_id, cat_name)]``: each box
    four finite numbers with an area (inside a ``size = (w, h)`` image when given, ``box_inside``), ``cat_id`` a
    non-negative integer, ``cat_name`` not empty."""
    out = []
    for item in field.strip().split("&&"):
        parts = item.strip().split(",", 5)
        if len(parts) != 6:
            raise DataError(f"detection box {item!r} is not x0,y0,x1,y1,cat_id,cat_name", field=column)
        box = check_box([parse_number(p, f"detection box {item!r}: coordinate", column) for p in parts[:4]],
                        item, column)
        cat_id = parse_index(parts[4], f"detection box {item!r}: category id", column)
        name = parts[5].strip()
        if not name:
            raise DataError(f"detection box {item!r} has an empty category name", field=column)
        if size is not None:
            box_inside(box, size, ",".join(f"{v:g}" for v in box), column)
        out.append((box, cat_id, name))
    return out
