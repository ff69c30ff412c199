"""SNLI-VE JSONL + Flickr30k images -> snli_ve TSV (uniq_id, image_id, image, hypothesis, caption, label).

uniq_id = pairID, image_id = Flickr30k_ID, hypothesis = sentence2, caption = sentence1 (the text premise),
label = gold_label (entailment / neutral / contradiction). Images are ``<Flickr30k_ID>.jpg`` under the image
folder (``--image-pattern`` to change).
"""
from __future__ import annotations

import json

from ofa.data_utils.converters._common import ConvertResult, ImageReader, clean_text, require
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.readers import decode_text
from ofa.data_utils.tsv_writer import write_tsv

NAME = "snli_ve"
HELP = "SNLI-VE JSONL + Flickr30k images -> snli_ve TSV"
LABELS = ("entailment", "neutral", "contradiction")


def _records(path: str):
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError("SNLI-VE JSONL file does not exist", path) from None
    except OSError as e:
        raise DataError(f"SNLI-VE JSONL file cannot be read ({e})", path) from None
    with f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield i, json.loads(decode_text(line, path, i, line=i + 1))
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e})", path, i, line=i + 1) from None


def convert(out: str, jsonl: str, images: str, image_pattern: str = "{image_id}.jpg", skip_bad: bool = False,
            verify_images: bool = True) -> ConvertResult:
    """Write the SNLI-VE TSV; returns the number of rows written (with skip counts attached).

    Errors name the 1-based line of the JSONL file (``DataError.line``; ``row`` is that line's 0-based index).
    """
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)
    seen = set()

    def row(i, rec):
        pair_id = clean_text(require(rec, "pairID", jsonl, i))
        image_id = clean_text(require(rec, "Flickr30k_ID", jsonl, i))
        premise = clean_text(require(rec, "sentence1", jsonl, i))
        hypothesis = clean_text(require(rec, "sentence2", jsonl, i))
        label = clean_text(require(rec, "gold_label", jsonl, i))
        if label not in LABELS:
            raise DataError(f"pair {pair_id}: gold_label {label!r} is not one of {list(LABELS)}",
                            jsonl, i, "gold_label")
        if pair_id in seen:
            raise DataError(f"pairID {pair_id!r} appears twice", jsonl, i, "pairID")
        seen.add(pair_id)
        try:
            name = image_pattern.format(image_id=image_id)
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"image pattern {image_pattern!r} does not format ({e}); the field is {{image_id}}",
                            jsonl, i, "Flickr30k_ID") from None
        b64 = reader.load(reader.path(name, jsonl, i), f"pair {pair_id} (image {image_id})", jsonl, i)
        if b64 is None:
            return None
        return {"uniq_id": pair_id, "image_id": image_id, "image": b64, "hypothesis": hypothesis,
                "caption": premise, "label": label}

    def rows():
        for i, rec in _records(jsonl):
            try:
                record = row(i, rec)
            except DataError as e:
                raise (e.at(line=i + 1) if e.path == jsonl else e) from None
            if record is not None:
                yield record

    return reader.result(write_tsv(out, get_schema("snli_ve"), rows()), out)


def add_arguments(parser) -> None:
    parser.add_argument("--jsonl", required=True, metavar="snli_ve_SPLIT.jsonl", help="SNLI-VE JSONL file")
    parser.add_argument("--images", required=True, metavar="DIR", help="Flickr30k image folder")
    parser.add_argument("--image-pattern", default="{image_id}.jpg", metavar="PATTERN",
                        help="image file name under DIR (default {image_id}.jpg)")


def run(args) -> ConvertResult:
    return convert(args.out, args.jsonl, args.images, image_pattern=args.image_pattern, skip_bad=args.skip_bad,
                   verify_images=args.verify_images)
