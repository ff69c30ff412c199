"""Embedded text data for the text-only tasks: a seeded generator of small learnable datasets.

``ofa-synth text OUT_DIR [--num N] [--seed S]``
writes, for each split ``train`` (N rows), ``valid`` and ``test`` (``max(8, N // 10)`` rows each):

- ``gigaword_{split}.tsv`` (``text_pair``: ``uniq_id, source, target``): a multi-sentence news-style
  "article" about a rendered-scene-like picture (coloured shapes, a spatial relation, distractor
  sentences) -> a short headline naming the two main objects and their relation, e.g.
  ``red circle left of blue square``;
- ``{cola,sst2,mrpc,qqp,mnli,rte,qnli}_{split}.tsv`` (``text_datasets.GLUE_SINGLE`` / ``GLUE_PAIR``:
  ``sentence, label`` / ``sentence1, sentence2, label``, no id column):
  grammatical vs word-shuffled sentences (CoLA, ``1``/``0``), sentiment templates (SST-2,
  ``1``/``0``), paraphrase pairs (MRPC, ``1``/``0``), equivalent questions (QQP, ``1``/``0``),
  premise/hypothesis pairs (MNLI: ``entailment``/``neutral``/``contradiction``; RTE:
  ``entailment``/``not_entailment``) and question/answer-sentence pairs (QNLI, same labels);
- ``text_{split}.tsv`` (``pretrain_text``: ``uniq_id, text``): scene descriptions for infilling;
- ``text_tasks_corpus.txt``: every text above plus the prompts and label words, one per line, to
  train a tokenizer on (``ofa-tokenizer train --corpus ...``);
- ``text_manifest.json``: rows per file, seed and sizes.

Every file depends only on the seed, its dataset name and split (``random.Random`` seeded with a
string), so the same arguments always give the same bytes. The words come from the image
benchmark's closed vocabulary (``ofa_synth/vocab.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ofa.data_utils.formats import get_schema
from ofa.data_utils.text_datasets import GLUE
from ofa.data_utils.tsv_writer import write_tsv
from ofa.io_utils import atomic_output, write_atomic
from ofa_synth.vocab import COLOR_NAMES, NUMBER_WORDS, SHAPES, SIZES, article, plural

SPLITS = ("train", "valid", "test")
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
OPENERS = ("in a picture released on monday ,", "officials said on tuesday that", "according to a new report ,",
           "witnesses said that", "in a photo published on friday ,", "a spokesman said that")
BACKGROUNDS = ("light grey", "pale yellow", "soft white", "light blue")
MATERIALS = ("wood", "glass", "paper", "metal")
POSITIVE = ("great", "lovely", "beautiful", "wonderful", "charming")
NEGATIVE = ("ugly", "awful", "boring", "terrible", "dull")

Obj = Tuple[str, str, str]  # (size, colour, shape)


def _obj(rng: random.Random, avoid: Tuple[Obj, ...] = ()) -> Obj:
    while True:
        o = (rng.choice(SIZES), rng.choice(COLOR_NAMES), rng.choice(SHAPES))
        if all(o[2] != a[2] for a in avoid):  # distinct shapes keep every reference unambiguous
            return o


def _np(o: Obj, size: bool = True) -> str:
    words = " ".join(o if size else o[1:])
    return f"{article(words)} {words}"


def _scene(rng: random.Random, n: int = 2) -> List[Obj]:
    objs: List[Obj] = []
    for _ in range(n):
        objs.append(_obj(rng, tuple(objs)))
    return objs


# ------------------------------------------------------------------------------------------ Gigaword
def gigaword_row(rng: random.Random) -> Dict[str, str]:
    objs = _scene(rng, rng.choice((2, 3)))
    a, b = objs[0], objs[1]
    rel = rng.choice(list(RELATIONS))
    sents = [f"{rng.choice(OPENERS)} {_np(a)} was seen {rel} {_np(b)} ."]
    fillers = [f"the picture has {NUMBER_WORDS[len(objs)]} objects in total .",
               f"the background of the scene is {rng.choice(BACKGROUNDS)} .",
               f"the {b[2]} is {RELATIONS[rel]} the {a[2]} , observers noted ."]
    if len(objs) == 3:
        fillers.append(f"{_np(objs[2])} was also visible at the {rng.choice(('top', 'bottom'))} of the frame .")
    rng.shuffle(fillers)
    sents += fillers[:rng.randint(1, len(fillers))]
    return {"source": " ".join(sents), "target": f"{a[1]} {a[2]} {rel} {b[1]} {b[2]}"}


# ------------------------------------------------------------------------------------------ GLUE
def _statement(rng: random.Random) -> str:
    a, b = _scene(rng)
    return f"the {' '.join(a)} is {rng.choice(list(RELATIONS))} the {' '.join(b[1:])} ."


def cola_row(rng: random.Random) -> Dict[str, str]:
    sentence = _statement(rng)
    if rng.random() < 0.5:
        return {"sentence": sentence, "label": "1"}
    words = sentence[:-2].split()
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return {"sentence": " ".join(shuffled) + " .", "label": "0"}


def sst2_row(rng: random.Random) -> Dict[str, str]:
    o = _obj(rng)
    positive = rng.random() < 0.5
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    verb = rng.choice(("like", "love", "enjoy") if positive else ("hate", "dislike"))
    template = rng.choice(("the {o} looks {adj} and i {verb} it .", "i {verb} this {adj} {o} .",
                           "what a {adj} {o} , i really {verb} it ."))
    return {"sentence": template.format(o=" ".join(o[1:]), adj=adj, verb=verb), "label": "1" if positive else "0"}


def mrpc_row(rng: random.Random) -> Dict[str, str]:
    a, b = _scene(rng)
    rel = rng.choice(list(RELATIONS))
    s1 = f"the {' '.join(a[1:])} is {rel} the {' '.join(b[1:])} ."
    if rng.random() < 0.5:
        s2 = rng.choice((f"the {' '.join(b[1:])} is {RELATIONS[rel]} the {' '.join(a[1:])} .",
                         f"{_np(a, size=False)} can be seen {rel} {_np(b, size=False)} ."))
        return {"sentence1": s1, "sentence2": s2, "label": "1"}
    other = rng.choice([c for c in COLOR_NAMES if c != a[1]])
    s2 = rng.choice((f"the {' '.join(b[1:])} is {rel} the {' '.join(a[1:])} .",
                     f"the {other} {a[2]} is {rel} the {' '.join(b[1:])} ."))
    return {"sentence1": s1, "sentence2": s2, "label": "0"}


def qqp_row(rng: random.Random) -> Dict[str, str]:
    shape = rng.choice(SHAPES)
    asks = {"color": ("what color is the {s} ?", "which color does the {s} have ?"),
            "count": ("how many {p} are there ?", "what is the number of {p} ?"),
            "where": ("where is the {s} ?", "in which part of the picture is the {s} ?")}
    kind = rng.choice(list(asks))
    q1 = rng.choice(asks[kind]).format(s=shape, p=plural(shape))
    if rng.random() < 0.5:
        q2 = next(q for q in asks[kind] if q.format(s=shape, p=plural(shape)) != q1).format(s=shape, p=plural(shape))
        return {"sentence1": q1, "sentence2": q2, "label": "1"}
    if rng.random() < 0.5:  # same question about another shape
        other = rng.choice([s for s in SHAPES if s != shape])
        q2 = rng.choice(asks[kind]).format(s=other, p=plural(other))
    else:  # another question about the same shape
        q2 = rng.choice(asks[rng.choice([k for k in asks if k != kind])]).format(s=shape, p=plural(shape))
    return {"sentence1": q1, "sentence2": q2, "label": "0"}


def nli_pair(rng: random.Random) -> Tuple[str, str, str]:
    """(premise, hypothesis, entailment | neutral | contradiction)."""
    a, b = _scene(rng)
    premise = f"the picture shows only {_np(a)} and {_np(b)} ."
    label = rng.choice(("entailment", "neutral", "contradiction"))
    o = rng.choice((a, b))
    if label == "entailment":
        hyp = rng.choice((f"there is {_np(o, size=False)} in the picture .", "the picture shows two objects .",
                          f"the {o[2]} is {o[0]} ."))
    elif label == "contradiction":
        other = rng.choice([c for c in COLOR_NAMES if c != o[1]])
        hyp = rng.choice((f"the picture shows no {o[2]} .", f"the {o[2]} is {other} .",
                          "the picture shows four objects ."))
    else:
        hyp = rng.choice((f"the {o[2]} is made of {rng.choice(MATERIALS)} .",
                          f"the {' '.join(o[1:])} was painted by a child ."))
    return premise, hyp, label


def mnli_row(rng: random.Random) -> Dict[str, str]:
    premise, hyp, label = nli_pair(rng)
    return {"sentence1": premise, "sentence2": hyp, "label": label}


def rte_row(rng: random.Random) -> Dict[str, str]:
    premise, hyp, label = nli_pair(rng)
    return {"sentence1": premise, "sentence2": hyp, "label": "entailment" if label == "entailment"
            else "not_entailment"}


def qnli_row(rng: random.Random) -> Dict[str, str]:
    a, b = _scene(rng)
    question = rng.choice(("what color is the {s} ?", "which color does the {s} have ?")).format(s=a[2])
    o = a if rng.random() < 0.5 else b
    sentence = f"the {o[2]} in the picture is {o[1]} ."
    return {"sentence1": question, "sentence2": sentence, "label": "entailment" if o is a else "not_entailment"}


# ------------------------------------------------------------------------------------------ infilling
def text_row(rng: random.Random) -> Dict[str, str]:
    objs = _scene(rng, rng.choice((2, 3)))
    sents = [f"{_np(objs[0])} is {rng.choice(list(RELATIONS))} {_np(objs[1])} .",
             f"there are {NUMBER_WORDS[len(objs)]} objects in the picture .",
             f"the background is {rng.choice(BACKGROUNDS)} ."]
    if len(objs) == 3:
        sents.append(f"{_np(objs[2])} is at the {rng.choice(('top', 'bottom'))} of the picture .")
    return {"text": " ".join(sents)}


GENERATORS: Dict[str, Tuple[Callable[[random.Random], Dict[str, str]], str]] = {
    "gigaword": (gigaword_row, "text_pair"),
    "cola": (cola_row, "cola"), "sst2": (sst2_row, "sst2"), "mrpc": (mrpc_row, "mrpc"), "qqp": (qqp_row, "qqp"),
    "mnli": (mnli_row, "mnli"), "rte": (rte_row, "rte"), "qnli": (qnli_row, "qnli"),
    "text": (text_row, "pretrain_text"),
}


def _schema(name: str):
    return GLUE[name].schema if name in GLUE else get_schema(name)


def rows(name: str, split: str, n: int, seed: int) -> Iterator[Dict[str, str]]:
    """``n`` rows of dataset ``name`` for ``split``; ids (where the layout has them) are ``{name}-{split}-{i}``."""
    make, _ = GENERATORS[name]
    rng = random.Random(f"ofa-synth-text:{seed}:{name}:{split}")
    for i in range(n):
        yield {"uniq_id": f"{name}-{split}-{i}", **make(rng)}


def split_sizes(num: int) -> Dict[str, int]:
    held = max(8, num // 10)
    return {"train": num, "valid": held, "test": held}


def corpus_lines(all_rows: Dict[str, List[Dict[str, str]]]) -> Iterator[str]:
    """Texts of every file plus prompts and label words (a tokenizer training corpus)."""
    for spec in GLUE.values():
        blank = {c: "" for c in spec.text_columns}
        yield " ".join(spec.template.format(**blank).split())
        for _ in range(20):
            yield " ".join(spec.answers)
    for prompt in ('what is the summary of article " "?', 'what is the complete text of " "?'):
        yield prompt
    for name, items in all_rows.items():
        for r in items:
            for col in ("source", "target", "sentence", "sentence1", "sentence2", "text"):
                if col in r:
                    yield r[col]


def generate(out_dir: str, num: int = 2000, seed: int = 0) -> Dict[str, int]:
    """Write every file (see the module docstring); returns ``{file name: rows}``."""
    os.makedirs(out_dir, exist_ok=True)
    sizes = split_sizes(num)
    files: Dict[str, int] = {}
    train_rows: Dict[str, List[Dict[str, str]]] = {}
    for name, (_, schema_name) in GENERATORS.items():
        schema = _schema(schema_name)
        for split, n in sizes.items():
            items = list(rows(name, split, n, seed))
            fname = f"{name}_{split}.tsv"
            files[fname] = write_tsv(os.path.join(out_dir, fname), schema, items)
            if split == "train":
                train_rows[name] = items
    corpus = list(corpus_lines(train_rows))
    with atomic_output(os.path.join(out_dir, "text_tasks_corpus.txt")) as tmp, \
            open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(corpus) + "\n")
    files["text_tasks_corpus.txt"] = len(corpus)
    manifest = {"seed": seed, "num": num, "split_sizes": sizes, "files": files}
    write_atomic(os.path.join(out_dir, "text_manifest.json"), json.dumps(manifest, indent=1))
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofa-synth text", description="Generate small learnable text datasets "
                                "(Gigaword-style summarisation, GLUE-style classification, an infilling corpus).")
    p.add_argument("out_dir", help="folder to write (created if missing; files in it are replaced)")
    p.add_argument("--num", type=int, default=2000, help="training rows per dataset (default 2000); valid and "
                                                        "test get max(8, num // 10) each")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num < 1:
        build_parser().error("--num must be >= 1")
    files = generate(args.out_dir, args.num, args.seed)
    if not args.quiet:
        print(f"wrote {len(files)} files to {args.out_dir}")
        for name, n in files.items():
            print(f"  {name:28s} {n:>7d}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
