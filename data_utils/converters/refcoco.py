"""RefCOCO / RefCOCO+ / RefCOCOg refs + COCO instances -> refcoco TSV (uniq_id, image_id, text, region_coord, image).

One row per referring sentence of the refs in ``--split``, in refs order. uniq_id = the sentence's ``sent_id``
(``<ref_id>_<k>`` when absent), image_id = COCO image id, text = the ``sent`` string, region_coord =
``x0,y0,x1,y1`` = ``x, y, x+w, y+h`` of the referred annotation's COCO box, in original-image pixels.
The refs file is a pickle (``refs(unc).p`` / ``refs(umd).p``), loaded with a restricted unpickler that accepts only
plain data, or a JSON list of the same records (``.json``).
"""
from __future__ import annotations

import numbers
from typing import Any, Dict

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


def _box(bbox: Any, path: str, row: int, ann_id: Any) -> str:
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox)):
        raise DataError(f"annotation {ann_id}: bbox {bbox!r} is not 4 numbers [x, y, w, h]", path, row, "bbox")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise DataError(f"annotation {ann_id}: bbox {bbox!r} has a negative width or height", path, row, "bbox")
    return ",".join(format_number(v) for v in (x, y, x + w, y + h))


def convert(out: str, refs: str, instances: str, images: str, split: str, skip_bad: bool = False,
            verify_images: bool = True) -> ConvertResult:
    """Write the refcoco TSV for ``split``; returns the number of rows written (with skip counts attached)."""
    ref_list = load_refs(refs)
    data = load_json(instances, "COCO instances")
    anns: Dict[Any, tuple] = {}
    for i, ann in enumerate(json_list(data, "annotations", instances)):
        anns[require(ann, "id", instances, i)] = (i, ann)
    files: Dict[Any, str] = {}
    for i, img in enumerate(json_list(data, "images", instances)):
        files[require(img, "id", instances, i)] = str(require(img, "file_name", instances, i))
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)
    schema = get_schema("refcoco")

    def rows():
        seen = set()
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
                text = clean_text(s.get("sent") or s.get("raw"))
                uniq = s.get("sent_id")
                texts.append((f"{ref_id}_{k}" if uniq is None else uniq, text))
            if not texts:
                continue
            b64 = reader.load(reader.path(files[image_id], refs, r), f"ref {ref_id} (image {image_id})", refs, r)
            if b64 is None:
                reader.skipped_rows += len(texts) - 1
                continue
            for uniq, text in texts:
                if str(uniq) in seen:
                    raise DataError(f"ref {ref_id}: sentence id {uniq!r} is not unique", refs, r, "sent_id")
                seen.add(str(uniq))
                yield {"uniq_id": uniq, "image_id": image_id, "text": text, "region_coord": box, "image": b64}
        if not matched:
            raise DataError(f"no refs have split {split!r}", refs, field="split")

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
