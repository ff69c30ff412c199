"""COCO captions (+ optional Karpathy split) -> caption TSV (uniq_id, image_id, caption, predicted_objects, image).

- ``--split train``: one row per caption; uniq_id = the caption's annotation id (Karpathy ``sentid`` when the
  captions come from the Karpathy file), image_id = COCO image id.
- ``--split val|test``: one row per image; uniq_id = image_id = COCO image id; the caption column holds every
  reference joined with ``&&``.
Captions are written as the official files hold them: lowercase, punctuation removed. predicted_objects is empty.
With a Karpathy file (``dataset_coco.json``) only its images of the requested split are written (``restval``
counts as train), in its order; captions then come from ``--captions`` when given, else from its ``raw``
sentences. Without it every image of ``--captions`` is written, in file order.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ofa.data_utils.converters._common import ConvertResult, ImageReader, caption_text, json_list, load_json, require
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.tsv_writer import write_tsv

NAME = "coco_caption"
HELP = "COCO captions JSON (+ Karpathy split) + image folder -> caption TSV"
SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def _load_captions(paths: Sequence[str]):
    """-> ({image_id: file_name}, {image_id: [(ann_id, caption, src, row)]}, image order)."""
    files: Dict[int, str] = {}
    caps: Dict[int, List[Tuple[object, str, str, int]]] = defaultdict(list)
    order: List[Tuple[int, str, int]] = []
    for path in paths:
        data = load_json(path, "COCO captions")
        for i, img in enumerate(json_list(data, "images", path)):
            image_id = require(img, "id", path, i)
            if image_id in files:
                raise DataError(f"image id {image_id} appears twice in the COCO images", path, i, "id")
            files[image_id] = str(require(img, "file_name", path, i))
            order.append((image_id, path, i))
        for i, ann in enumerate(json_list(data, "annotations", path)):
            image_id = require(ann, "image_id", path, i)
            text = str(require(ann, "caption", path, i))
            ann_id = ann.get("id")
            caps[image_id].append((f"{image_id}_{len(caps[image_id])}" if ann_id is None else ann_id, text, path, i))
    return files, caps, order


def convert(out: str, images: str, captions: Union[str, Sequence[str], None] = None, karpathy: Optional[str] = None,
            split: str = "train", skip_bad: bool = False, verify_images: bool = True) -> ConvertResult:
    """Write the caption TSV; returns the number of rows written (with skip counts attached)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions or [])
    if not captions and not karpathy:
        raise DataError("give a COCO captions JSON (--captions) and/or a Karpathy split file (--karpathy)")
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)
    files, caps, order = _load_captions(captions) if captions else ({}, {}, [])

    # entries: (image_id, candidate image names, [(uniq_id, caption, src, row)], src, row)
    entries = []
    if karpathy:
        for i, img in enumerate(json_list(load_json(karpathy, "Karpathy split"), "images", karpathy)):
            kind = require(img, "split", karpathy, i)
            if kind not in KARPATHY_SPLITS:
                raise DataError(f"unknown split {kind!r} (expected train/restval/val/test)", karpathy, i, "split")
            if KARPATHY_SPLITS[kind] != split:
                continue
            image_id = require(img, "cocoid", karpathy, i)
            filename = str(require(img, "filename", karpathy, i))
            names = [f"{img['filepath']}/{filename}"] if img.get("filepath") else []
            names.append(filename)
            if captions:
                if image_id not in caps:
                    raise DataError(f"COCO image {image_id} of the Karpathy split has no captions in "
                                    f"{', '.join(captions)} (give the captions file holding it, or leave out "
                                    f"--captions to use the Karpathy sentences)", karpathy, i, "cocoid")
                if image_id in files:
                    names.append(files[image_id])
                refs = caps[image_id]
            else:
                sents = require(img, "sentences", karpathy, i)
                refs = [(s.get("sentid", f"{image_id}_{k}") if isinstance(s, dict) else f"{image_id}_{k}",
                         str(require(s, "raw", karpathy, i)), karpathy, i) for k, s in enumerate(sents)]
            entries.append((image_id, names, refs, karpathy, i))
    else:
        for image_id, src, i in order:
            entries.append((image_id, [files[image_id]], caps.get(image_id, []), src, i))

    schema = get_schema("caption")
    seen = set()

    def rows():
        for image_id, names, refs, src, i in entries:
            texts = []
            for uniq, raw, rsrc, rrow in refs:
                text = caption_text(raw)
                if not text:
                    raise DataError(f"caption {uniq!r} of image {image_id} is empty after cleaning", rsrc, rrow,
                                    "caption")
                texts.append((uniq, text))
            if not texts:
                if split == "train":
                    continue
                raise DataError(f"image {image_id} has no captions (val/test rows need references)", src, i)
            path = reader.first_existing(names, src, i)
            b64 = reader.load(path, f"COCO image {image_id}", src, i)
            if b64 is None:
                if split == "train":  # one row per caption: every caption row of the image is dropped
                    reader.skipped_rows += len(texts) - 1
                continue
            if split == "train":
                for uniq, text in texts:
                    if str(uniq) in seen:
                        raise DataError(f"caption id {uniq!r} is not unique", src, i, "uniq_id")
                    seen.add(str(uniq))
                    yield {"uniq_id": uniq, "image_id": image_id, "caption": text, "predicted_objects": "",
                           "image": b64}
            else:
                yield {"uniq_id": image_id, "image_id": image_id, "caption": "&&".join(t for _, t in texts),
                       "predicted_objects": "", "image": b64}

    return reader.result(write_tsv(out, schema, rows()), out)


def add_arguments(parser) -> None:
    parser.add_argument("--captions", action="append", metavar="CAPTIONS.json",
                        help="COCO captions JSON (captions_train2014.json ...); repeat to merge several")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="COCO image folder (Karpathy 'filepath' subfolders are tried first)")
    parser.add_argument("--karpathy", metavar="dataset_coco.json", help="Karpathy split file")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="train: one row per caption; val/test: one row per image with all references")


def run(args) -> ConvertResult:
    return convert(args.out, args.images, captions=args.captions, karpathy=args.karpathy, split=args.split,
                   skip_bad=args.skip_bad, verify_images=args.verify_images)
