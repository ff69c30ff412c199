"""COCO instances (``instances_*.json``) + COCO images -> detection TSV (uniq_id, image, boxes).

One row per image of the JSON's ``images`` list, in its order; uniq_id = the COCO image id. boxes = the image's
annotations in file order, each ``x0,y0,x1,y1,cat_id,cat_name`` (original-image pixels, left, top, right,
bottom: ``x, y, x+w, y+h`` of the COCO ``[x, y, w, h]`` bbox; cat_id = the COCO ``category_id``, cat_name =
its category's name), joined with ``&&``; an image without objects gets an empty boxes field (``--skip-empty``
leaves it out). Crowd annotations (``iscrowd`` 1) are left out unless ``--keep-crowd``; boxes with a zero width
or height (after rounding to 4 decimals) are dropped. What is left out is counted on the result (``dropped``,
printed by ``ofa-data convert``). Next to the TSV, ``OUT.classes.txt`` lists every category name in id
order (the detection task's ``--class-names``).
"""
from __future__ import annotations

import numbers
import os
from collections import defaultdict
from typing import Any, Dict, List

from ofa.data_utils.converters._common import (
    ConvertResult,
    ImageReader,
    clean_text,
    format_number,
    json_list,
    load_json,
    require,
)
from ofa.data_utils.converters.refcoco import coco_box
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.tsv_writer import write_tsv
from ofa.io_utils import write_atomic

NAME = "coco_detection"
HELP = "COCO instances JSON + COCO images -> detection TSV (one row per image, boxes with categories)"
# what ``dropped`` counts (printed by ``ofa-data convert``)
CROWD, ZERO, EMPTY = ("crowd annotations (--keep-crowd keeps them)", "boxes with a zero width or height",
                      "images without objects (--skip-empty)")


def _categories(data: Any, path: str) -> Dict[Any, str]:
    """{category id: name}: ids non-negative integers, names cleaned, not empty, without ``&&``."""
    names: Dict[Any, str] = {}
    for i, cat in enumerate(json_list(data, "categories", path)):
        cat_id = require(cat, "id", path, i)
        if not isinstance(cat_id, numbers.Integral) or isinstance(cat_id, bool) or cat_id < 0:
            raise DataError(f"category id {cat_id!r} is not a non-negative integer", path, i, "id")
        if cat_id in names:
            raise DataError(f"category id {cat_id} appears twice in the categories", path, i, "id")
        name = clean_text(require(cat, "name", path, i))
        if not name:
            raise DataError(f"category {cat_id}: the name is empty", path, i, "name")
        if "&&" in name:
            raise DataError(f"category {cat_id}: name {name!r} holds '&&', the boxes separator", path, i, "name")
        names[cat_id] = name
    return names


def convert(out: str, instances: str, images: str, keep_crowd: bool = False, skip_empty: bool = False,
            skip_bad: bool = False, verify_images: bool = True) -> ConvertResult:
    """Write the detection TSV; returns the number of rows written (with skip counts and ``dropped`` attached)."""
    data = load_json(instances, "COCO instances")
    names = _categories(data, instances)
    order: List[tuple] = []  # (image_id, file_name, row)
    known = set()
    for i, img in enumerate(json_list(data, "images", instances)):
        image_id = require(img, "id", instances, i)
        if image_id in known:
            raise DataError(f"image id {image_id} appears twice in the COCO images", instances, i, "id")
        known.add(image_id)
        order.append((image_id, str(require(img, "file_name", instances, i)), i))
    dropped = dict.fromkeys((CROWD, ZERO, EMPTY), 0)
    boxes: Dict[Any, List[str]] = defaultdict(list)
    for i, ann in enumerate(json_list(data, "annotations", instances)):
        image_id = require(ann, "image_id", instances, i)
        ann_id = ann.get("id")
        if image_id not in known:
            raise DataError(f"annotation {ann_id}: image {image_id} is not in the images", instances, i, "image_id")
        cat_id = require(ann, "category_id", instances, i)
        if cat_id not in names:
            raise DataError(f"annotation {ann_id}: category {cat_id!r} is not in the categories", instances, i,
                            "category_id")
        coords = [format_number(v) for v in coco_box(require(ann, "bbox", instances, i), instances, i, ann_id)]
        if ann.get("iscrowd") and not keep_crowd:
            dropped[CROWD] += 1
        elif not (float(coords[0]) < float(coords[2]) and float(coords[1]) < float(coords[3])):
            dropped[ZERO] += 1
        else:
            boxes[image_id].append(",".join(coords + [str(cat_id), names[cat_id]]))
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)

    def rows():
        for image_id, file_name, i in order:
            items = boxes.get(image_id, [])
            if not items and skip_empty:
                dropped[EMPTY] += 1
                continue
            b64 = reader.load(reader.path(file_name, instances, i), f"COCO image {image_id}", instances, i)
            if b64 is not None:
                yield {"uniq_id": image_id, "image": b64, "boxes": "&&".join(items)}

    rows_written = write_tsv(out, get_schema("detection"), rows())
    classes = classes_path(out)
    write_atomic(classes, "".join(name + "\n" for _, name in sorted(names.items())))
    result = reader.result(rows_written, out, extra_files=(classes,))
    result.dropped = dropped
    return result


def classes_path(out: str) -> str:
    """The class list written next to ``out`` (``det.tsv`` -> ``det.classes.txt``): every category name in
    category-id order, one per line, for ``--class-names`` of the detection task."""
    return os.path.splitext(out)[0] + ".classes.txt"


def add_arguments(parser) -> None:
    parser.add_argument("--instances", required=True, metavar="instances.json",
                        help="the COCO instances file (instances_train2017.json ...)")
    parser.add_argument("--images", required=True, metavar="DIR", help="COCO image folder (train2017 ...)")
    parser.add_argument("--keep-crowd", action="store_true", help="keep crowd annotations (iscrowd 1)")
    parser.add_argument("--skip-empty", action="store_true", help="leave out images without objects")


def run(args) -> ConvertResult:
    return convert(args.out, args.instances, args.images, keep_crowd=args.keep_crowd, skip_empty=args.skip_empty,
                   skip_bad=args.skip_bad, verify_images=args.verify_images)
