"""The embedded benchmark generator (``ofa_synth``): determinism, official formats, correct
boxes and answers, and the compositional split. About 40 images per run, so the whole file is fast."""
from __future__ import annotations

import json
import os
import pickle
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from ofa.data_utils.formats import get_schema, parse_answers, parse_box
from ofa.data_utils.images import decode_b64
from ofa_synth import SynthConfig, generate
from ofa_synth.vocab import COLORS, SHAPES, SIZES
from ofa_synth.writer import main

N, SEED, SIZE = 40, 3, 128
SPLITS = ("train", "valid", "test", "comp")
TASKS = ("caption", "refcoco", "vqa", "snli_ve", "image_classify")
MARGIN = 0.12 * SIZE  # positional words need this gap between box centres (language.REL_MARGIN)
COMBO_RE = re.compile(r"\b(%s) (%s)" % ("|".join(COLORS), "|".join(SHAPES)))


def _make(path, n=N, seed=SEED, workers=1):
    return generate(str(path), SynthConfig(seed=seed, num_images=n, image_size=SIZE), workers=workers)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth")
    _make(path)
    return path


def rows(out, name):
    with open(os.path.join(out, name), encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def table(out, task, split):
    cols = get_schema(task).columns
    return [dict(zip(cols, r)) for r in rows(out, f"{task}_{split}.tsv")]


def scenes(out, split):
    with open(os.path.join(out, f"scenes_{split}.jsonl")) as f:
        return {s["image_id"]: s for s in map(json.loads, f)}


def held_out(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return {tuple(c) for c in json.load(f)["held_out_combos"]}


def combos(text):
    return {(m.group(1), m.group(2)) for m in COMBO_RE.finditer(text)}


def files(path):
    return sorted(f for f in os.listdir(path) if f != "manifest.json")


def center(o):
    x0, y0, x1, y1 = o["box"]
    return ((x0 + x1) / 2, (y0 + y1) / 2)


def match_expression(text, objects):
    """Our own reading of a referring expression: the objects it can denote (see language.resolve)."""
    words = text.split()
    assert words[0] == "the", text
    where = None
    for w, suffix in (("left", "on the left"), ("right", "on the right"), ("top", "at the top"),
                      ("bottom", "at the bottom")):
        if text.endswith(" " + suffix):
            where, words = w, text[: -len(suffix) - 1].split()
    attrs = {"color": [w for w in words if w in COLORS], "shape": [w for w in words if w in SHAPES],
             "size": [w for w in words if w in SIZES]}
    cands = [o for o in objects if all(o[k] == v[0] for k, v in attrs.items() if v)]
    if where is None:
        return cands
    if len(cands) < 2:
        return []
    axis = 0 if where in ("left", "right") else 1
    cands.sort(key=lambda o: center(o)[axis], reverse=where in ("right", "bottom"))
    return cands[:1] if abs(center(cands[1])[axis] - center(cands[0])[axis]) >= MARGIN else []


# ------------------------------------------------------------------------------------------ determinism

def test_same_seed_gives_byte_identical_files(out, tmp_path):
    _make(tmp_path)
    assert files(tmp_path) == files(out)
    for name in files(out):
        with open(out / name, "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


def test_worker_processes_do_not_change_the_output(out, tmp_path):
    _make(tmp_path, workers=2)
    for name in files(out):
        with open(out / name, "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


def test_other_seed_gives_other_data(out, tmp_path):
    _make(tmp_path, seed=SEED + 1)
    assert (out / "caption_train.tsv").read_bytes() != (tmp_path / "caption_train.tsv").read_bytes()


def test_image_i_does_not_depend_on_how_many_images_are_made(out, tmp_path):
    _make(tmp_path, n=12)
    for split in SPLITS:
        small = scenes(tmp_path, split)
        big = scenes(out, split)
        assert small and all(big[i] == s for i, s in small.items())
    for name in files(tmp_path):
        if name.startswith(("caption", "refcoco", "vqa", "snli_ve")):
            few = rows(tmp_path, name)
            assert few == rows(out, name)[: len(few)], name


# ------------------------------------------------------------------------------------------------ formats

def test_every_file_has_the_official_columns_and_decodable_images(out):
    for task in TASKS:
        schema = get_schema(task)
        for split in SPLITS:
            data = rows(out, f"{task}_{split}.tsv")
            assert data, (task, split)
            assert all(len(r) == len(schema.columns) for r in data), (task, split)
            col = schema.columns.index("image")
            for r in data[:5]:
                assert decode_b64(r[col]).size == (SIZE, SIZE)
            for id_col in ("uniq_id", "question_id"):
                if id_col in schema.columns:
                    ids = [r[schema.columns.index(id_col)] for r in data]
                    assert len(set(ids)) == len(ids), (task, split)


def test_one_image_string_is_shared_by_all_rows_of_an_image(out):
    by_image = defaultdict(set)
    for task in ("caption", "refcoco", "vqa", "snli_ve"):
        for r in table(out, task, "train"):
            by_image[r["image_id"]].add(r["image"])
    assert by_image and all(len(v) == 1 for v in by_image.values())


def test_vqa_answers_use_the_official_confidence_encoding(out):
    with open(out / "vqa_ans2label.json") as f:
        ans2label = json.load(f)
    with open(out / "trainval_ans2label.pkl", "rb") as f:
        assert pickle.load(f) == ans2label
    assert sorted(ans2label.values()) == list(range(len(ans2label)))
    for split in SPLITS:
        for r in table(out, "vqa", split):
            answers = parse_answers(r["answers"])
            assert all(round(c * 3) in (1, 2, 3) and abs(c * 3 - round(c * 3)) < 1e-4 for c in answers.values())
            assert max(answers.values()) == 1.0 and next(iter(answers.values())) == 1.0
            assert all(a in ans2label for a in answers)
            assert r["question"].endswith("?") and r["question"] == r["question"].lower()


def test_vqa_true_answers_agree_with_the_scene(out):
    checked = 0
    for split in SPLITS:
        sc = scenes(out, split)
        for r in table(out, "vqa", split):
            objs = sc[int(r["image_id"])]["objects"]
            q, top = r["question"], next(iter(parse_answers(r["answers"])))
            m = re.fullmatch(r"how many (\w+)s are there\?", q)
            if m and m.group(1) in SHAPES:
                assert top == str(sum(o["shape"] == m.group(1) for o in objs)), q
                checked += 1
            m = re.fullmatch(r"is there an? (\w+) (\w+)\?", q)
            if m:
                assert top == ("yes" if any((o["color"], o["shape"]) == m.groups() for o in objs) else "no"), q
                checked += 1
            m = re.fullmatch(r"what color is (the .+)\?", q)
            if m:
                (target,) = match_expression(m.group(1), objs)
                assert top == target["color"], q
                checked += 1
            if q == "how many objects are there?":
                assert top == str(len(objs))
    assert checked > 20


def test_captions_are_lowercase_and_five_different_per_image(out):
    per_image = defaultdict(list)
    for r in table(out, "caption", "train"):
        per_image[r["image_id"]].append(r["caption"])
    for split in ("valid", "test", "comp"):
        for r in table(out, "caption", split):
            per_image[r["image_id"]].append(r["caption"].split("&&"))
    assert len(per_image) == N
    for caps in per_image.values():
        caps = caps[0] if isinstance(caps[0], list) else caps
        assert len(caps) == 5 and len(set(caps)) == 5
        assert all(c == c.lower() and c.strip() == c and c for c in caps)


def test_classification_labels_are_class_names_with_1_based_index(out):
    names = (out / "class_names.txt").read_text().splitlines()
    assert len(names) == len(COLORS) * len(SHAPES) and len(set(names)) == len(names)
    for split in SPLITS:
        sc = scenes(out, split)
        labels = table(out, "image_classify", split)
        assert len(labels) == len(sc)
        for r, s in zip(labels, sc.values()):
            assert names[int(r["label_index"]) - 1] == r["label_name"]
            main_obj = s["objects"][s["main"]]
            assert r["label_name"] == f"{main_obj['color']} {main_obj['shape']}"
            assert all(main_obj["area"] > o["area"] for o in s["objects"] if o is not main_obj)


def test_entailment_labels_are_the_official_strings(out):
    for split in SPLITS:
        data = table(out, "snli_ve", split)
        assert Counter(r["label"] for r in data).keys() == {"entailment", "contradiction", "neutral"}
        assert all(r["caption"] and r["hypothesis"] for r in data)


def test_neutral_hypotheses_talk_about_what_an_image_cannot_show(out):
    undecidable = re.compile(r"made of|heavy|weighs|old|made yesterday|new|belongs|warm|hollow|costs|smells")
    for split in SPLITS:
        for r in table(out, "snli_ve", split):
            assert bool(undecidable.search(r["hypothesis"])) == (r["label"] == "neutral"), r["hypothesis"]


def test_no_relation_word_gives_the_entailment_label_away():
    """'A is to the left of B' is true or false by the image alone: every relation word occurs under both
    labels (the generator once said only 'left of' / 'above' for true and 'right of' / 'below' for false)."""
    import random

    from ofa_synth.language import hypothesis_candidates
    from ofa_synth.scenes import all_combos, sample_scene

    words = ("to the left of", "to the right of", "above", "below")
    by_word = {w: Counter() for w in words}
    for i in range(200):
        scene = sample_scene(np.random.default_rng([SEED, i]), SIZE, SIZE, all_combos())
        for label, texts in hypothesis_candidates(scene, random.Random(i), absent=[]).items():
            for w in words:
                by_word[w][label] += sum(f" is {w} the " in t.text for t in texts)
    for w, labels in by_word.items():
        assert 0.4 <= labels["entailment"] / sum(labels.values()) <= 0.6, (w, labels)


def test_text_corpus_has_one_lowercase_sentence_per_line(out):
    lines = (out / "text_corpus.txt").read_text().split("\n")
    assert lines[-1] == "" and len(lines) > N
    assert all(line and line == line.lower() and "\t" not in line for line in lines[:-1])


# ------------------------------------------------------------------------------------ scenes and boxes

def test_scenes_have_two_to_four_mostly_visible_objects(out):
    for split in SPLITS:
        for s in scenes(out, split).values():
            assert 2 <= len(s["objects"]) <= 4
            assert all(o["visible"] >= 0.6 for o in s["objects"])


def _near(img, rgb, tol=30):
    return (np.abs(img.astype(int) - np.array(rgb)) <= tol).all(axis=-1)


def test_ref_boxes_lie_in_the_image_and_tightly_around_an_object_of_the_named_colour(out):
    for split in SPLITS:
        sc = scenes(out, split)
        for r in table(out, "refcoco", split):
            x0, y0, x1, y1 = (int(v) for v in parse_box(r["region_coord"]))
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            (obj,) = [o for o in sc[int(r["image_id"])]["objects"] if o["box"] == [x0, y0, x1, y1]]
            named = [w for w in r["text"].split() if w in COLORS]
            assert named in ([], [obj["color"]]), r["text"]
            mask = _near(np.asarray(decode_b64(r["image"])), COLORS[obj["color"]])
            inside = mask[y0:y1, x0:x1]
            assert inside.mean() > 0.2
            # tight: every edge row/column of the box holds the colour, the ring just outside does not
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            pad = np.pad(mask, 1)[y0:y1 + 2, x0:x1 + 2]
            assert not (pad[0].any() or pad[-1].any() or pad[:, 0].any() or pad[:, -1].any())


def test_referring_expressions_pick_out_exactly_one_object(out):
    n = 0
    for split in SPLITS:
        sc = scenes(out, split)
        for r in table(out, "refcoco", split):
            found = match_expression(r["text"], sc[int(r["image_id"])]["objects"])
            assert len(found) == 1 and ",".join(map(str, found[0]["box"])) == r["region_coord"], r["text"]
            n += 1
    assert n > N


def test_referring_expressions_mostly_have_look_alike_distractors(out):
    with_distractor = total = 0
    for r in table(out, "refcoco", "train"):
        objs = scenes(out, "train")[int(r["image_id"])]["objects"]
        (target,) = match_expression(r["text"], objs)
        total += 1
        with_distractor += any(o is not target and (o["color"] == target["color"] or o["shape"] == target["shape"])
                               for o in objs)
    assert with_distractor > total / 2


# ------------------------------------------------------------------------------------ compositional split

def _training_texts(out, split):
    for r in table(out, "caption", split):
        yield r["caption"]
    for r in table(out, "refcoco", split):
        yield r["text"]
    for r in table(out, "vqa", split):
        yield r["question"]
    for r in table(out, "snli_ve", split):
        yield r["hypothesis"]
        yield r["caption"]


def test_held_out_combos_never_appear_in_train_valid_or_iid_test(out):
    held = held_out(out)
    assert len(held) == 4
    assert len({c for c, _ in held}) == 4 and len({s for _, s in held}) == 4
    for split in ("train", "valid", "test"):
        for text in _training_texts(out, split):
            assert not combos(text) & held, text
        for s in scenes(out, split).values():
            assert not {(o["color"], o["shape"]) for o in s["objects"]} & held
        assert not {tuple(r["label_name"].split()) for r in table(out, "image_classify", split)} & held
    for line in (out / "text_corpus.txt").read_text().splitlines():
        assert not combos(line) & held, line


def test_comp_split_is_about_held_out_combos(out):
    held = held_out(out)
    sc = scenes(out, "comp")
    assert sc
    for s in sc.values():
        main_obj = s["objects"][s["main"]]
        assert (main_obj["color"], main_obj["shape"]) in held
    for r in table(out, "caption", "comp"):
        assert all(combos(c) & held for c in r["caption"].split("&&")), r["caption"]
    for r in table(out, "refcoco", "comp"):
        (target,) = match_expression(r["text"], sc[int(r["image_id"])]["objects"])
        assert (target["color"], target["shape"]) in held, r["text"]
    for task, col in (("vqa", "question"), ("snli_ve", "hypothesis")):
        about = {row[0]: row[2] for s in sc.values() for row in s["about"][task]}
        id_col = get_schema(task).columns[0]
        for r in table(out, task, "comp"):
            objs = sc[int(r["image_id"])]["objects"]
            assert combos(r[col]) & held or any((objs[k]["color"], objs[k]["shape"]) in held
                                                for k in about[int(r[id_col])]), r[col]
    assert {tuple(r["label_name"].split()) for r in table(out, "image_classify", "comp")} <= held


def test_splits_take_their_fractions_and_never_share_an_image():
    from ofa_synth.splits import split_of
    counts = Counter(split_of(i, 0.1, 0.1, 0.1) for i in range(1000))
    assert counts == {"train": 700, "valid": 100, "test": 100, "comp": 100}
    counts = Counter(split_of(i, 0.05, 0.2, 0.0) for i in range(1000))
    assert counts == {"train": 750, "valid": 50, "test": 200}


# ---------------------------------------------------------------------------------- manifest and CLI

def test_manifest_counts_every_file_and_records_speed(out):
    with open(out / "manifest.json") as f:
        m = json.load(f)
    assert m["seed"] == SEED and m["num_images"] == N and m["image_size"] == [SIZE, SIZE]
    from ofa_synth.version import GENERATOR_VERSION

    assert m["generator_version"] == GENERATOR_VERSION  # the main job regenerates older benchmarks
    assert sum(m["images_per_split"].values()) == N and m["images_per_split"]["test"] > 0 and m["images_per_split"]["comp"] > 0
    assert m["images_per_second"] > 0 and m["generation_seconds"] > 0
    for name, count in m["files"].items():
        if name.endswith((".tsv", ".txt", ".jsonl")):
            assert count == len((out / name).read_text().splitlines()), name
    assert set(m["files"]) == set(files(out))


def test_cli_writes_the_benchmark_and_prints_the_speed(tmp_path, capsys):
    assert main([str(tmp_path / "o"), "--num-images", "6", "--seed", "1", "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "caption_train.tsv" in printed
    assert decode_b64(rows(tmp_path / "o", "image_classify_train.tsv")[0][0]).size == (64, 64)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "p"), "--valid-frac", "0.6", "--test-frac", "0.5"])
