"""``ofa-data cider-df``: the CIDEr-D document frequencies of a caption split, in the layout of the official
``cider_cached_tokens/coco-train-words.p`` that ``--scst-cider-cached-tokens`` reads.

Without that file the SCST reward takes document frequencies from each batch's references (a few dozen
images); the official stage 2 uses the frequencies of the whole training split. For COCO the official
release ships the pickle; for any other caption data this command writes it:

    ofa-data cider-df caption_stage2_train.tsv --out cider_cached_tokens/train-words.p

A document is one image: every reference of the image id (column 1 by default), from rows that hold one
caption each (stage-1 layout) or ``&&``-joined references (stage-2 layout). References are normalised as
the reward normalises them (punctuation removed, `` <eos>`` appended), so the n-grams match.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence

from ofa.data_utils.errors import DataError
from ofa.data_utils.readers import split_line


def references_by_image(paths: Sequence[str], image_col: int = 1, caption_col: int = 2) -> Dict[str, List[str]]:
    """``image id -> its references`` over caption TSVs (``&&`` splits joined references); a short row, a row
    without a caption or bytes that are not UTF-8 raise ``DataError`` naming the file and the 1-based line."""
    refs: Dict[str, List[str]] = OrderedDict()
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                names = {image_col: f"column {image_col}", caption_col: f"column {caption_col}"}
                cols = split_line(raw, "\t", [names.get(i) for i in range(raw.count(b"\t") + 1)], str(path),
                                  line=number)
                if max(image_col, caption_col) >= len(cols):
                    raise DataError(f"{len(cols)} columns; the image id is column {image_col} and the captions "
                                    f"column {caption_col}", path=str(path), field="columns", line=number)
                captions = [c for c in cols[caption_col].split("&&") if c.strip()]
                if not captions:
                    raise DataError("no caption", path=str(path), field=f"column {caption_col}", line=number)
                refs.setdefault(cols[image_col], []).extend(captions)
    return refs


def main(argv=None) -> int:
    from ofa.data_utils.cli import ArgumentParser
    from ofa.io_utils import atomic_output
    from ofa.metrics.cider import build_document_frequency, normalize_for_reward, save_document_frequency

    p = ArgumentParser(prog="ofa-data cider-df", description=__doc__.split("\n\n")[0])
    p.add_argument("tsv", nargs="+", help="caption TSV file(s) of the training split")
    p.add_argument("--out", required=True, help="pickle to write (official coco-*-words.p layout)")
    p.add_argument("--image-col", type=int, default=1, help="column of the image id (default 1)")
    p.add_argument("--caption-col", type=int, default=2, help="column of the caption(s) (default 2)")
    args = p.parse_args(argv)
    for name, value in (("--image-col", args.image_col), ("--caption-col", args.caption_col)):
        if value < 0:
            p.error(f"{name} must be a 0-based column number, got {value}")
    refs = references_by_image(args.tsv, args.image_col, args.caption_col)
    df, ref_len = build_document_frequency([[normalize_for_reward(r) for r in rs] for rs in refs.values()])
    with atomic_output(args.out) as tmp:  # a half-written pickle never replaces a good one
        save_document_frequency(tmp, df, ref_len)
    print(f"wrote {args.out}: {int(ref_len)} images, {sum(len(r) for r in refs.values())} references, "
          f"{len(df)} n-grams")
    return 0
