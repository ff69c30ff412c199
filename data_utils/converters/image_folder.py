"""An ImageNet-layout tree ``root/<class_name>/*.jpg`` -> image_classify TSV (image, label_index, label_name).

Classes are the sub-folders of ``root`` (hidden ones ignored) in sorted order; label_index is 1-based in that
order (as the official ``synset_words.txt`` index); label_name is the folder name with ``_`` -> space. Images are
the files with an image extension directly inside each class folder, in sorted order. ``--class2label-out``
writes {label_name: label_index} as a pickle and as JSON.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from ofa.data_utils.converters._common import ConvertResult, ImageReader, clean_text, write_mapping
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.tsv_writer import write_tsv

NAME = "image_folder"
HELP = "ImageNet-layout folder tree (root/<class>/*.jpg) -> image_classify TSV (+ class2label)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def classes(root: str) -> Dict[str, tuple]:
    """{class folder: (label_index, label_name)}."""
    if not os.path.isdir(root):
        raise DataError("class folder root does not exist or is not a folder", root)
    names = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not names:
        raise DataError("no class sub-folders found (expected root/<class_name>/<image files>)", root)
    out, by_label = {}, {}
    for i, d in enumerate(names, start=1):
        label = clean_text(d.replace("_", " "))
        if not label:
            raise DataError(f"class folder {d!r} gives an empty label name", os.path.join(root, d))
        if label in by_label:
            raise DataError(f"class folders {by_label[label]!r} and {d!r} both give label name {label!r}",
                            os.path.join(root, d))
        by_label[label] = d
        out[d] = (i, label)
    return out


def convert(out: str, root: str, class2label_out: Optional[str] = None, skip_bad: bool = False,
            verify_images: bool = True) -> ConvertResult:
    """Write the image_classify TSV; returns the number of rows written (with skip counts attached)."""
    table = classes(root)
    reader = ImageReader(root, skip_bad=skip_bad, verify=verify_images, cache_size=0)

    def rows():
        for d, (index, label) in table.items():
            folder = os.path.join(root, d)
            files = sorted(f for f in os.listdir(folder)
                           if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
            for k, f in enumerate(files):
                b64 = reader.load(os.path.join(folder, f), f"class {d!r} file {f!r}", folder, k)
                if b64 is None:
                    continue
                yield {"image": b64, "label_index": index, "label_name": label}

    n = write_tsv(out, get_schema("image_classify"), rows())
    extra = ()
    if class2label_out:
        written = write_mapping(class2label_out, {label: index for index, label in table.values()})
        extra = (written["pickle"], written["json"])
    return reader.result(n, out, extra)


def add_arguments(parser) -> None:
    parser.add_argument("--root", required=True, metavar="DIR", help="folder holding one sub-folder per class")
    parser.add_argument("--class2label-out", metavar="CLASS2LABEL.pkl",
                        help="also write {label_name: label_index} as .pkl and .json")


def run(args) -> ConvertResult:
    return convert(args.out, args.root, class2label_out=args.class2label_out, skip_bad=args.skip_bad,
                   verify_images=args.verify_images)
