"""RefCOCO / RefCOCO+ / RefCOCOg refs + COCO instances -> region_caption TSV (uniq_id, image_id, caption,
region_coord, image).

The region of a ref is its annotation's COCO box, region_coord = ``x0,y0,x1,y1`` = ``x, y, x+w, y+h`` in
original-image pixels (left, top, right, bottom); its referring sentences are the captions, written as the
official caption files hold them (lowercase, punctuation removed, so no caption can hold the ``&&`` separator).

- default (training): one row per sentence of the refs in ``--split``, in refs order; uniq_id = ``sent_id``
  (``<ref_id>_<k>`` when absent), as the refcoco converter writes.
- ``--join-refs`` (evaluation): one row per ref; uniq_id = ``ref_id``; caption = all its sentences joined with
  ``&&`` (the references CIDEr scores against).

The refs and instances files are read as the ``refcoco`` converter reads them (same checks, same errors).
"""
from __future__ import annotations

from ofa.data_utils.converters._common import ConvertResult, ImageReader, caption_text
from ofa.data_utils.converters.refcoco import add_arguments as add_refcoco_arguments
from ofa.data_utils.converters.refcoco import load_instances, load_refs, split_refs
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.tsv_writer import write_tsv

NAME = "refcoco_regions"
HELP = "RefCOCO/+/g refs + instances.json + COCO images -> region_caption TSV (region box + its sentences)"


def convert(out: str, refs: str, instances: str, images: str, split: str, join_refs: bool = False,
            skip_bad: bool = False, verify_images: bool = True) -> ConvertResult:
    """Write the region_caption TSV for ``split``; returns the number of rows written (with skip counts)."""
    ref_list = load_refs(refs)
    anns, files = load_instances(instances)
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)

    def rows():
        seen = set()
        for ref in split_refs(ref_list, refs, split, instances, anns, files):
            texts = []
            for k, (uniq, raw) in enumerate(ref.sentences):
                text = caption_text(raw)
                if not text:
                    raise DataError(f"ref {ref.ref_id}: sentence {k} ({raw!r}) is empty after cleaning", refs,
                                    ref.row, "sentences")
                texts.append((uniq, text))
            if not texts:
                continue
            b64 = reader.load(reader.path(ref.file_name, refs, ref.row),
                              f"ref {ref.ref_id} (image {ref.image_id})", refs, ref.row)
            if b64 is None:
                reader.skipped_rows += 0 if join_refs else len(texts) - 1
                continue
            if join_refs:
                texts = [(ref.ref_id, "&&".join(text for _, text in texts))]
            for uniq, text in texts:
                if str(uniq) in seen:
                    what = "ref id" if join_refs else "sentence id"
                    raise DataError(f"ref {ref.ref_id}: {what} {uniq!r} is not unique", refs, ref.row,
                                    "ref_id" if join_refs else "sent_id")
                seen.add(str(uniq))
                yield {"uniq_id": uniq, "image_id": ref.image_id, "caption": text, "region_coord": ref.box,
                       "image": b64}

    return reader.result(write_tsv(out, get_schema("region_caption"), rows()), out)


def add_arguments(parser) -> None:
    add_refcoco_arguments(parser)
    parser.add_argument("--join-refs", action="store_true",
                        help="one row per ref with all its sentences joined by '&&' (evaluation references)")


def run(args) -> ConvertResult:
    return convert(args.out, args.refs, args.instances, args.images, args.split, join_refs=args.join_refs,
                   skip_bad=args.skip_bad, verify_images=args.verify_images)
