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

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple, Union

from ofa.data_utils.errors import DataError


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
]}
# official task names that read the same files
SCHEMAS["vqa_gen"] = SCHEMAS["vqa"]


def get_schema(name: str) -> Schema:
    if name not in SCHEMAS:
        raise DataError(f"unknown data schema {name!r}; choose one of {sorted(SCHEMAS)}")
    return SCHEMAS[name]


def resolve_columns(schema: Schema, selected: Sequence[Union[str, int]]) -> Tuple[int, ...]:
    """Column names or indices -> indices in file order."""
    return tuple(schema.index(c) for c in selected)


def parse_answers(field: str) -> Dict[str, float]:
    """``"0.6|!+no&&1.0|!+yes"`` -> ``{"no": 0.6, "yes": 1.0}``; raises ``DataError`` on bad items."""
    out: Dict[str, float] = {}
    for item in field.split("&&"):
        if "|!+" not in item:
            raise DataError(f"answer item {item!r} is not 'confidence|!+answer'", field="answers")
        conf, answer = item.split("|!+", 1)
        try:
            value = float(conf)
        except ValueError:
            raise DataError(f"answer confidence {conf!r} is not a number", field="answers") from None
        if not 0.0 <= value <= 1.0 or not answer.strip():
            raise DataError(f"answer item {item!r} needs a confidence in [0, 1] and a non-empty answer",
                            field="answers")
        out[answer] = value
    return out


def format_answers(answers: Dict[str, float]) -> str:
    return "&&".join(f"{conf:.6g}|!+{ans}" for ans, conf in answers.items())


def parse_box(field: str) -> Tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> floats; checks there are four numbers with x0 <= x1 and y0 <= y1."""
    parts = field.split(",")
    if len(parts) != 4:
        raise DataError(f"box {field!r} must have 4 comma-separated numbers (x0,y0,x1,y1)", field="region_coord")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise DataError(f"box {field!r} holds a non-number", field="region_coord") from None
    if x1 < x0 or y1 < y0:
        raise DataError(f"box {field!r} is not in x0,y0,x1,y1 order (x1 < x0 or y1 < y0)", field="region_coord")
    return x0, y0, x1, y1
