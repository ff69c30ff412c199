"""GQA-style verification questions of the pretraining sources (``language.verify_questions``)."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from ofa.data_utils.formats import parse_answers
from ofa_synth.language import NUMBER_WORDS, REL_MARGIN, pick_balanced, unique_phrases, verify_questions
from ofa_synth.records import SynthConfig, make_record
from ofa_synth.scenes import Scene
from ofa_synth.splits import allowed_combos, choose_held_out

CFG = SynthConfig(seed=0, num_images=10 ** 6, image_size=64)


def scenes(n=40):
    held = tuple(choose_held_out(0))
    for i in range(n):
        rec = make_record(1000 + i, CFG)
        scene = Scene.from_json(rec.scene)
        present = {o.combo for o in scene.objects}
        absent = random.Random(i).sample([c for c in allowed_combos(rec.split, held) if c not in present], 3)
        yield scene, absent


RELATIONS = {  # (centre of the first, centre of the second, margin) -> the relation holds
    "to the left of": lambda a, b, m: a[0] + m <= b[0], "to the right of": lambda a, b, m: b[0] + m <= a[0],
    "above": lambda a, b, m: a[1] + m <= b[1], "below": lambda a, b, m: b[1] + m <= a[1]}


def center(o):
    return ((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2)


def test_restored_scene_gives_the_same_descriptions_as_the_record():
    rec = make_record(1234, CFG)
    scene = Scene.from_json(rec.scene)
    restored = scene.to_json()
    assert restored == {k: rec.scene[k] for k in restored}  # every field the scene writes comes back
    assert [o.box for o in scene.objects] == [tuple(o["box"]) for o in rec.scene["objects"]]
    refs = {r["text"] for r in rec.rows["refcoco"]}
    phrases = {"the " + p for k in range(len(scene.objects)) for p in unique_phrases(scene, k)}
    assert refs <= phrases  # every referring expression of the record still picks out one object


def test_verification_answers_agree_with_the_scene():
    seen = Counter()
    for scene, absent in scenes():
        objs = scene.objects
        who = {p: k for k in range(len(objs)) for p in unique_phrases(scene, k)}
        for kind, qs in verify_questions(scene, random.Random(0), absent).items():
            for q in qs:
                seen[kind, q.answer] += 1
                truth = q.answer == "yes"
                if kind == "exist":
                    c, s = q.text[len("is there "):-1].split()[-2:]
                    assert ((c, s) in {o.combo for o in objs}) == truth, q.text
                elif kind == "size":
                    (k,) = q.objs
                    assert q.text.endswith(f" {objs[k].size}?") == truth, q.text
                elif kind == "relation":
                    word = next(w for w in RELATIONS if f" {w} the " in q.text)
                    first, second = q.text[len("is the "):-1].split(f" {word} the ")
                    a, b = [objs[who[p]] for p in (first, second)]
                    holds = RELATIONS[word](center(a), center(b), REL_MARGIN * min(scene.width, scene.height))
                    assert holds == truth, q.text
                elif kind == "count":
                    number = q.text.split()[2]
                    assert (NUMBER_WORDS.index(number) == len(objs)) == truth, q.text
    for kind in ("exist", "size", "relation", "count"):
        assert seen[kind, "yes"] > 0 and seen[kind, "no"] > 0, (kind, seen)


def test_relation_questions_come_in_true_and_converse_pairs():
    for scene, absent in scenes(20):
        rel = verify_questions(scene, random.Random(1), absent)["relation"]
        assert len(rel) % 2 == 0
        for yes, no in zip(rel[::2], rel[1::2]):
            assert (yes.answer, no.answer) == ("yes", "no") and yes.objs == no.objs
            swap = {"to the left of": "to the right of", "above": "below"}
            word = next(w for w in swap if f" {w} " in yes.text)
            assert no.text == yes.text.replace(f" {word} ", f" {swap[word]} ")


def test_pick_balanced_alternates_answers_and_covers_the_kinds():
    answers, kinds = Counter(), Counter()
    for scene, absent in scenes(60):
        picked = pick_balanced(verify_questions(scene, random.Random(2), absent), random.Random(3), 6)
        assert len(picked) == 6 and len({q.text for q in picked}) == 6
        answers.update(q.answer for q in picked)
        kinds.update(q.kind for q in picked)
    assert abs(answers["yes"] - answers["no"]) <= 0.1 * sum(answers.values())
    assert set(kinds) == {"exist", "size", "relation", "count"}


@pytest.mark.parametrize("k", [0, 4])
def test_synth_pretrain_writes_verification_rows_beside_the_benchmark_rows(tmp_path, k):
    from ofa_synth.pretrain import main as pretrain_main

    pretrain_main([str(tmp_path / "v"), "--num-images", "12", "--image-size", "48", "--verify-per-scene", str(k),
                   "--quiet"])
    rows = [ln.rstrip("\n").split("\t") for ln in open(tmp_path / "v" / "pretrain_vl.tsv")]
    verify = [r for r in rows if r[6] == "synth_gqa"]
    m = json.loads((tmp_path / "v" / "pretrain_manifest.json").read_text())
    assert len(verify) == m["verify_questions"] == k * m["train_scenes_kept"]
    for r in verify:
        assert r[7] == "qa" and r[3].endswith("?") and r[0].startswith("vf")
        ans = parse_answers(r[4])
        assert max(ans, key=ans.get) in ("yes", "no")
    if k:  # the benchmark-kind rows do not depend on the verification questions
        pretrain_main([str(tmp_path / "n"), "--num-images", "12", "--image-size", "48", "--verify-per-scene", "0",
                       "--quiet"])
        other = [r for r in rows if r[6] != "synth_gqa"]
        assert other == [ln.rstrip("\n").split("\t") for ln in open(tmp_path / "n" / "pretrain_vl.tsv")]
