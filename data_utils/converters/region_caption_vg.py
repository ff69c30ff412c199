"""Visual Genome ``region_descriptions.json`` + VG images -> region_caption TSV (uniq_id, image_id, caption,
region_coord, image).

One row per region, images and regions in file order: uniq_id = ``region_id``, image_id = the VG image id,
caption = the ``phrase`` as the official caption files hold it (lowercase, punctuation removed), region_coord =
``x0,y0,x1,y1`` = ``x, y, x+width, y+height`` in original-image pixels (left, top, right, bottom), clipped to
the image (VG boxes sometimes run past it; the size is read from the image file's header; an image PIL cannot
open, accepted with ``--no-verify-images``, is not clipped).

Left out and counted on the result (``dropped``): regions whose width or height is below ``--min-size`` pixels
(as annotated, before clipping), regions with no area left inside the image, regions whose phrase is empty
after cleaning, and regions past the first ``--max-regions-per-image`` kept of an image. ``--ids`` keeps only
the image ids it lists (one per line: a split); an id the descriptions lack is an error.

Image files: ``--images DIR/{image_id}.jpg`` (or under ``VG_100K/`` / ``VG_100K_2/`` there); with
``--image-data image_data.json`` the basename of each image's ``url`` (tried under the URL's folder first).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

from ofa.data_utils.boxes import clamp_box
from ofa.data_utils.converters._common import (
    ConvertResult,
    ImageReader,
    caption_text,
    format_number,
    load_json,
    require,
)
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.tsv_writer import write_tsv

NAME = "vg_regions"
HELP = "Visual Genome region_descriptions.json + VG images -> region_caption TSV (one row per region)"
DEFAULT_NAMES = ("{}.jpg", "VG_100K/{}.jpg", "VG_100K_2/{}.jpg")
# what ``dropped`` counts (printed by ``ofa-data convert``)
SMALL, OUTSIDE, EMPTY, OVER = ("regions below --min-size", "regions with no area inside the image",
                               "regions with an empty phrase", "regions past --max-regions-per-image")


def _read_ids(path: str) -> Dict[str, int]:
    """{image id text: 1-based line} of a one-id-per-line file (blank lines ignored)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"ids file cannot be read ({e})", path) from None
    ids: Dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if line.strip():
            ids.setdefault(line.strip(), n)
    return ids


def _image_names(path: str) -> Dict[Any, List[str]]:
    """{image id: candidate file names} from ``image_data.json`` (``image_id`` or ``id``, and ``url``)."""
    data = load_json(path, "VG image data")
    if not isinstance(data, list):
        raise DataError(f"image data file holds a {type(data).__name__}, expected a list of images", path)
    names: Dict[Any, List[str]] = {}
    for i, rec in enumerate(data):
        image_id = require(rec, "image_id" if isinstance(rec, dict) and "image_id" in rec else "id", path, i)
        parts = str(require(rec, "url", path, i)).rstrip("/").split("/")
        names[image_id] = ([f"{parts[-2]}/{parts[-1]}"] if len(parts) > 1 and parts[-2] else []) + [parts[-1]]
    return names


def _number(region: Any, key: str, path: str, row: int, what: str) -> float:
    value = require(region, key, path, row)
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise DataError(f"{what}: {key} {value!r} is not a finite number", path, row, key)
    return float(value)


def _image_size(path: str) -> Optional[Tuple[int, int]]:
    """The image's ``(width, height)`` from its header, ``None`` when PIL cannot open it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _clipped(box: Tuple[float, ...], size: Optional[Tuple[int, int]]) -> Optional[str]:
    """``x0,y0,x1,y1`` clipped to a ``w x h`` image, ``None`` when no area is left (after rounding)."""
    if size is not None:
        box = clamp_box(box, size)
    coords = [format_number(v) for v in box]
    if not (float(coords[0]) < float(coords[2]) and float(coords[1]) < float(coords[3])):
        return None
    return ",".join(coords)


def convert(out: str, descriptions: str, images: str, image_data: Optional[str] = None, ids: Optional[str] = None,
            min_size: float = 1, max_regions_per_image: int = 0, skip_bad: bool = False,
            verify_images: bool = True) -> ConvertResult:
    """Write the region_caption TSV; returns the number of rows written (with skip counts and ``dropped``)."""
    if not (math.isfinite(min_size) and min_size >= 0) or max_regions_per_image < 0:
        raise DataError("--min-size and --max-regions-per-image must be >= 0")
    records = load_json(descriptions, "VG region descriptions")
    if not isinstance(records, list):
        raise DataError(f"region descriptions file holds a {type(records).__name__}, expected a list", descriptions)
    wanted = _read_ids(ids) if ids else None
    names = _image_names(image_data) if image_data else {}
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)
    dropped = dict.fromkeys((SMALL, OUTSIDE, EMPTY, OVER), 0)
    src = descriptions

    def regions_of(rec: Any, i: int, image_id: Any, seen: set) -> List[tuple]:
        """The image's regions that pass ``--min-size`` and have a phrase: ``(region_id, caption, box)``."""
        regions = require(rec, "regions", src, i)
        if not isinstance(regions, list):
            raise DataError(f"image {image_id}: regions is not a list", src, i, "regions")
        kept = []
        for region in regions:
            region_id = require(region, "region_id", src, i)
            what = f"image {image_id}, region {region_id}"
            if region.get("image_id", image_id) != image_id:
                raise DataError(f"{what} names image {region['image_id']}", src, i, "image_id")
            if str(region_id) in seen:
                raise DataError(f"{what}: region id {region_id!r} is not unique", src, i, "region_id")
            seen.add(str(region_id))
            x, y, w, h = (_number(region, k, src, i, what) for k in ("x", "y", "width", "height"))
            if w < 0 or h < 0:
                raise DataError(f"{what}: negative width or height ({w:g} x {h:g})", src, i,
                                "width" if w < 0 else "height")
            caption = caption_text(require(region, "phrase", src, i))
            if w < min_size or h < min_size:
                dropped[SMALL] += 1
            elif not caption:
                dropped[EMPTY] += 1
            else:
                kept.append((region_id, caption, (x, y, x + w, y + h)))
        return kept

    def rows():
        images_seen, regions_seen = set(), set()
        for i, rec in enumerate(records):
            image_id = require(rec, "image_id" if isinstance(rec, dict) and "id" not in rec else "id", src, i)
            if image_id in images_seen:
                raise DataError(f"image id {image_id} appears twice", src, i, "id")
            images_seen.add(image_id)
            if wanted is not None and str(image_id) not in wanted:
                continue
            kept = regions_of(rec, i, image_id, regions_seen)
            if not kept:
                continue
            path = reader.first_existing(names.get(image_id) or [p.format(image_id) for p in DEFAULT_NAMES], src, i)
            b64 = reader.load(path, f"VG image {image_id}", src, i)
            if b64 is None:
                reader.skipped_rows += min(len(kept), max_regions_per_image or len(kept)) - 1
                continue
            size, written = _image_size(path), 0
            for region_id, caption, box in kept:
                coord = _clipped(box, size)
                if coord is None:
                    dropped[OUTSIDE] += 1
                elif max_regions_per_image and written >= max_regions_per_image:
                    dropped[OVER] += 1
                else:
                    written += 1
                    yield {"uniq_id": region_id, "image_id": image_id, "caption": caption, "region_coord": coord,
                           "image": b64}
        found = {str(x) for x in images_seen}
        missing = [(n, v) for v, n in (wanted or {}).items() if v not in found]
        if missing:
            line, first = min(missing)
            raise DataError(f"{len(missing)} image ids of the ids file are not in {src} (first: {first!r})", ids,
                            line=line)

    result = reader.result(write_tsv(out, get_schema("region_caption"), rows()), out)
    result.dropped = dropped
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--regions", required=True, metavar="region_descriptions.json",
                        help="VG region descriptions: a list of {id, regions: [{region_id, phrase, x, y, width, "
                             "height}]}")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="VG image folder holding {image_id}.jpg (or VG_100K/, VG_100K_2/ under it)")
    parser.add_argument("--image-data", metavar="image_data.json",
                        help="VG image data: file names from each image's url (image_id or id, url)")
    parser.add_argument("--ids", metavar="IDS.txt", help="only these image ids (one per line: the split)")
    parser.add_argument("--min-size", type=float, default=1, metavar="N",
                        help="leave out regions whose width or height is below N pixels (default 1)")
    parser.add_argument("--max-regions-per-image", type=int, default=0, metavar="K",
                        help="keep at most the first K regions of an image (default 0: all)")


def run(args) -> ConvertResult:
    return convert(args.out, args.regions, args.images, image_data=args.image_data, ids=args.ids,
                   min_size=args.min_size, max_regions_per_image=args.max_regions_per_image,
                   skip_bad=args.skip_bad, verify_images=args.verify_images)
