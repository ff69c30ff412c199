"""RefCOCO / RefCOCO+ / RefCOCOg refs + COCO instances -> refcoco TSV (uniq_id, image_id, text, region_coord, image).

One row per referring sentence of the refs in ``--split``, in refs order. uniq_id = the sentence's ``sent_id``
(``<ref_id>_<k>`` when absent), image_id = COCO image id, text = the ``sent`` string, region_coord =
``x0,y0,x1,y1`` = ``x, y, x+w, y+h`` of the referred annotation's COCO box, in original-image pixels.
The refs file is a pickle (``refs(unc).p`` / ``refs(umd).p``), loaded with a restricted unpickler that accepts only
plain data, or a JSON list of the same records (``.json``).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterator, List, NamedTuple, Tuple

from ofa.data_utils.converters._common import (
    ConvertResult,
    ImageReader,
    clean_text,
    format_number,
    json_list,
    load_json,
    require,
)
from ofa.data_utils.converters.safe_pickle import safe_load
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.tsv_writer import write_tsv

NAME = "refcoco"
HELP = "RefCOCO/+/g refs pickle or JSON + instances.json + COCO images -> refcoco TSV"


def load_refs(path: str) -> list:
    refs = load_json(path, "refs") if path.lower().endswith(".json") else safe_load(path, "refs pickle")
    if not isinstance(refs, list):
        raise DataError(f"refs file holds a {type(refs).__name__}, expected a list of refs", path)
    return refs


def coco_box(bbox: Any, path: str, row: int, ann_id: Any) -> Tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]`` box -> ``(x0, y0, x1, y1)`` = ``(x, y, x+w, y+h)`` in original-image pixels; not 4
    finite numbers or a negative width/height is a ``DataError`` (field ``bbox``). A zero size is returned as is."""
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise DataError(f"annotation {ann_id}: bbox {bbox!r} is not 4 numbers [x, y, w, h]", path, row, "bbox")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise DataError(f"annotation {ann_id}: bbox {bbox!r} has a negative width or height", path, row, "bbox")
    return x, y, x + w, y + h


def _box(bbox: Any, path: str, row: int, ann_id: Any) -> str:
    return ",".join(format_number(v) for v in coco_box(bbox, path, row, ann_id))


def load_instances(path: str) -> Tuple[Dict[Any, tuple], Dict[Any, str]]:
    """COCO instances file -> ``({ann_id: (row, annotation)}, {image_id: file_name})``."""
    data = load_json(path, "COCO instances")
    anns: Dict[Any, tuple] = {}
    for i, ann in enumerate(json_list(data, "annotations", path)):
        anns[require(ann, "id", path, i)] = (i, ann)
    files: Dict[Any, str] = {}
    for i, img in enumerate(json_list(data, "images", path)):
        files[require(img, "id", path, i)] = str(require(img, "file_name", path, i))
    return anns, files


class Ref(NamedTuple):
    """One ref of the split: its record row, ids, image file name, ``x0,y0,x1,y1`` box text and
    ``[(uniq_id, raw sentence)]`` (uniq_id = ``sent_id``, ``<ref_id>_<k>`` when absent)."""

    row: int
    ref_id: Any
    image_id: Any
    file_name: str
    box: str
    sentences: List[Tuple[Any, str]]


def split_refs(ref_list: list, refs: str, split: str, instances: str, anns: Dict[Any, tuple],
               files: Dict[Any, str]) -> Iterator[Ref]:
    """The refs of ``split`` in file order, each checked against the instances (``DataError`` naming the refs
    file, the ref's row and the field); no ref of the split at all is a ``DataError`` too."""
    matched = 0
    for r, ref in enumerate(ref_list):
        if require(ref, "split", refs, r) != split:
            continue
        matched += 1
        ref_id = require(ref, "ref_id", refs, r)
        ann_id = require(ref, "ann_id", refs, r)
        image_id = require(ref, "image_id", refs, r)
        sents = require(ref, "sentences", refs, r)
        if not isinstance(sents, list):
            raise DataError(f"ref {ref_id}: sentences is not a list", refs, r, "sentences")
        if ann_id not in anns:
            raise DataError(f"ref {ref_id}: annotation {ann_id} is not in {instances}", refs, r, "ann_id")
        a_row, ann = anns[ann_id]
        if "image_id" in ann and ann["image_id"] != image_id:
            raise DataError(f"ref {ref_id}: annotation {ann_id} belongs to image {ann['image_id']}, "
                            f"not {image_id}", refs, r, "image_id")
        box = _box(require(ann, "bbox", instances, a_row), instances, a_row, ann_id)
        if image_id not in files:
            raise DataError(f"ref {ref_id}: image {image_id} is not in {instances}", refs, r, "image_id")
        texts = []
        for k, s in enumerate(sents):
            if not isinstance(s, dict) or not (s.get("sent") or s.get("raw")):
                raise DataError(f"ref {ref_id}: sentence {k} lacks 'sent'", refs, r, "sentences")
            uniq = s.get("sent_id")
            texts.append((f"{ref_id}_{k}" if uniq is None else uniq, s.get("sent") or s.get("raw")))
        yield Ref(r, ref_id, image_id, files[image_id], box, texts)
    if not matched:
        raise DataError(f"no refs have split {split!r}", refs, field="split")


def convert(out: str, refs: str, instances: str, images: str, split: str, skip_bad: bool = False,
            verify_images: bool = True) -> ConvertResult:
    """Write the refcoco TSV for ``split``; returns the number of rows written (with skip counts attached)."""
    ref_list = load_refs(refs)
    anns, files = load_instances(instances)
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)
    schema = get_schema("refcoco")

    def rows():
        seen = set()
        for ref in split_refs(ref_list, refs, split, instances, anns, files):
            texts = [(uniq, clean_text(raw)) for uniq, raw in ref.sentences]
            if not texts:
                continue
            b64 = reader.load(reader.path(ref.file_name, refs, ref.row),
                              f"ref {ref.ref_id} (image {ref.image_id})", refs, ref.row)
            if b64 is None:
                reader.skipped_rows += len(texts) - 1
                continue
            for uniq, text in texts:
                if str(uniq) in seen:
                    raise DataError(f"ref {ref.ref_id}: sentence id {uniq!r} is not unique", refs, ref.row,
                                    "sent_id")
                seen.add(str(uniq))
                yield {"uniq_id": uniq, "image_id": ref.image_id, "text": text, "region_coord": ref.box,
                       "image": b64}

    return reader.result(write_tsv(out, schema, rows()), out)


def add_arguments(parser) -> None:
    parser.add_argument("--refs", required=True, metavar="REFS",
                        help="refs(unc).p / refs(umd).p (plain-data pickle, loaded safely) or a refs .json")
    parser.add_argument("--instances", required=True, metavar="instances.json", help="the COCO instances file")
    parser.add_argument("--images", required=True, metavar="DIR", help="COCO image folder (train2014)")
    parser.add_argument("--split", required=True, help="refs split to write: train, val, testA, testB, test")


def run(args) -> ConvertResult:
    return convert(args.out, args.refs, args.instances, args.images, args.split, skip_bad=args.skip_bad,
                   verify_images=args.verify_images)
