"""The region tasks: COCO mAP (== pycocotools), the detection grammar (a scripted model), object parsing, and
how the detection / region-caption datasets build their samples."""
from __future__ import annotations

import math
import random

import pytest
import torch
from fairseq.data import Dictionary
from torch import nn

from data_helpers import png, write
from ofa.data_utils.datasets import DataConfig
from ofa.data_utils.readers import open_reader
from ofa.data_utils.region_datasets import DetectionDataset, RegionCaptionDataset, order_objects
from ofa.generate import SequenceGenerator, Trie
from ofa.generate.constraints import DetectionGrammar
from ofa.metrics.detection import DetectionAccumulator, coco_map, pycocotools_map
from ofa.tasks.detection import image_recall, split_objects

pytest.importorskip("pycocotools")


# ----------------------------------------------------------------------------------------------- mAP
def random_case(rng: random.Random, images: int, cats="abc"):
    gt, dt = {}, {}
    for img in range(images):
        objs = []
        for _ in range(rng.randint(0, 6)):
            x0, y0 = rng.uniform(0, 200), rng.uniform(0, 200)
            objs.append(((x0, y0, x0 + rng.uniform(2, 140), y0 + rng.uniform(2, 140)), rng.choice(cats)))
        gt[img] = objs
        dets = []
        for box, c in objs:  # noisy copies of most objects, sometimes with the wrong class
            if rng.random() < 0.8:
                j = [v + rng.uniform(-12, 12) for v in box]
                dets.append(((j[0], j[1], max(j[2], j[0] + 1), max(j[3], j[1] + 1)),
                             c if rng.random() < 0.8 else rng.choice(cats), round(rng.random(), 1)))
        for _ in range(rng.randint(0, 3)):  # and false positives; scores rounded so that ties happen
            x0, y0 = rng.uniform(0, 200), rng.uniform(0, 200)
            dets.append(((x0, y0, x0 + rng.uniform(2, 140), y0 + rng.uniform(2, 140)), rng.choice(cats),
                         round(rng.random(), 1)))
        dt[img] = dets
    return gt, dt


@pytest.mark.parametrize("seed", range(12))
def test_coco_map_equals_pycocotools_on_random_cases(seed):
    gt, dt = random_case(random.Random(seed), images=1 + seed % 6)
    ours, theirs = coco_map(gt, dt), pycocotools_map(gt, dt)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-12), k


def test_coco_map_on_a_hand_made_case_equals_pycocotools_and_hand_values():
    # image 1: a cat found twice (the second is a duplicate: a false positive) and a dog missed;
    # image 2: a dog found at IoU 0.6 (a hit at .50-.60 only) and a cat predicted where there is none
    gt = {1: [((0, 0, 10, 10), "cat"), ((20, 20, 40, 40), "dog")], 2: [((0, 0, 10, 10), "dog")]}
    dt = {1: [((0, 0, 10, 10), "cat", 0.9), ((0, 0, 10, 9), "cat", 0.8)],
          2: [((0, 0, 10, 6), "dog", 0.7), ((50, 50, 60, 60), "cat", 0.95)]}
    ours, theirs = coco_map(gt, dt), pycocotools_map(gt, dt)
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-12), k
    # AP50: cat: the false positive (0.95) ranks first, then the hit: precision 1/2 up to recall 1 -> 0.5;
    # dog: one hit of two boxes, precision 1 up to recall 0.5 -> 51 of 101 points
    assert ours["AP50"] == pytest.approx((0.5 + 51 / 101) / 2)
    assert ours["APm"] == -1.0 and ours["APl"] == -1.0  # every box is small (< 32^2 pixels)... but one
    gt[1].append(((0, 0, 100, 100), "cat"))
    assert coco_map(gt, dt)["APl"] == pycocotools_map(gt, dt)["APl"] == 0.0


def test_accumulator_batch_by_batch_equals_one_call():
    gt, dt = random_case(random.Random(7), images=9)
    acc = DetectionAccumulator(sorted({c for objs in gt.values() for _, c in objs}))
    for img in sorted(gt):
        acc.add(gt[img], dt[img])
    assert acc.summary() == coco_map(gt, dt)


def test_no_detections_give_zero_where_there_is_ground_truth():
    gt = {0: [((0, 0, 10, 10), "a")]}
    assert coco_map(gt, {}) == pycocotools_map(gt, {}) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0,
                                                           "APm": -1.0, "APl": -1.0}


def test_image_recall_counts_objects_found_with_their_label():
    gt = [((0, 0, 10, 10), "a"), ((20, 20, 30, 30), "b")]
    assert image_recall(gt, [{"box": [0, 0, 10, 9], "label": "a"}]) == 0.5
    assert image_recall(gt, [{"box": [0, 0, 10, 9], "label": "b"}]) == 0.0
    assert image_recall([], []) == 1.0 and image_recall([], [{"box": [0, 0, 1, 1], "label": "a"}]) == 0.0


# ----------------------------------------------------------------------------------------------- grammar
# a small vocabulary: specials 0-3, text tokens 4-7, bins 8-15
BOS, PAD, EOS = 0, 1, 2
T4, T5, T6, T7 = 4, 5, 6, 7
BIN0, NBINS = 8, 8
V = BIN0 + NBINS


def names_trie():
    """Class names: [T4] ("a"), [T5] ("b") and [T5, T6] ("b c", longer than a whole name)."""
    trie = Trie(EOS)
    for seq in ([T4], [T5], [T5, T6]):
        trie.insert(seq + [EOS])
    return trie


def allowed(grammar, prefix):
    mask = grammar.allowed(torch.tensor([[BOS, *prefix]]), V)[0]
    return {i for i in range(V) if mask[i]}


BINS = set(range(BIN0, BIN0 + NBINS))


def test_grammar_bins_then_a_name_then_bins_or_eos():
    g = DetectionGrammar(names_trie(), BIN0, BIN0 + NBINS, EOS, max_objects=2)
    assert allowed(g, []) == BINS | {EOS}  # an object, or no objects at all
    for k in range(1, 4):
        assert allowed(g, [BIN0] * k) == BINS  # a box is four bins
    assert allowed(g, [BIN0] * 4) == {T4, T5}  # then a class name from its first token
    assert allowed(g, [BIN0] * 4 + [T4]) == BINS | {EOS}  # "a" is whole: next object or the end
    assert allowed(g, [BIN0] * 4 + [T5]) == {T6} | BINS | {EOS}  # "b" is whole, and "b c" goes on
    assert allowed(g, [BIN0] * 4 + [T5, T6]) == BINS | {EOS}
    assert allowed(g, [BIN0] * 4 + [T4] + [BIN0 + 1] * 2) == BINS
    assert allowed(g, [BIN0] * 4 + [T4] + [BIN0 + 1] * 4 + [T5, T6]) == {EOS}  # max_objects reached


class PreferenceModel(nn.Module):
    """A scripted encoder-decoder whose next-token logits are always the same ranking: T7 (no name at all)
    first, then T6, the bins (bin 3 best), T5, T4, and EOS last. Unconstrained it writes T7 forever."""

    ORDER = [T7, T6, BIN0 + 3] + [b for b in range(BIN0, BIN0 + NBINS) if b != BIN0 + 3] + [T5, T4, EOS]

    def __init__(self):
        super().__init__()
        logits = torch.full((V,), -30.0)
        for rank, tok in enumerate(self.ORDER):
            logits[tok] = -float(rank)
        self.register_buffer("logits", logits)
        model = self

        class Encoder(nn.Module):
            def forward(self, src_tokens, src_lengths=None, **kwargs):
                bsz, t = src_tokens.shape
                return {"encoder_out": [torch.zeros(t, bsz, 2)], "encoder_padding_mask": [src_tokens.eq(PAD)],
                        "position_embeddings": [torch.zeros(bsz, t, 2)]}

            def reorder_encoder_out(self, enc, order):
                return {"encoder_out": [enc["encoder_out"][0].index_select(1, order)],
                        "encoder_padding_mask": [enc["encoder_padding_mask"][0].index_select(0, order)],
                        "position_embeddings": [enc["position_embeddings"][0].index_select(0, order)]}

        class Decoder(nn.Module):
            def forward(self, tokens, code_masks=None, encoder_out=None, incremental_state=None, **kwargs):
                return model.logits.expand(tokens.size(0), tokens.size(1), V).clone(), {}

            def output_layer(self, features):
                return features

            def reorder_incremental_state_scripting(self, state, order):
                pass

        self.encoder, self.decoder = Encoder(), Decoder()


def tiny_dict() -> Dictionary:
    d = Dictionary()
    for w in ["a", "b", "c", "x"] + [f"<bin_{i}>" for i in range(NBINS)]:
        d.add_symbol(w)
    assert len(d) == V
    return d


@pytest.mark.parametrize("beam", [1, 3])
def test_scripted_model_decodes_only_what_the_grammar_allows(beam):
    model = PreferenceModel()
    src = torch.tensor([[BOS, T4, EOS]])
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([3])}}
    free = SequenceGenerator([model], tiny_dict(), beam_size=beam, max_len_b=13, min_len=0).generate(sample)
    assert free[0][0]["tokens"].tolist()[:3] == [T7, T7, T7]  # the model alone ignores the grammar
    grammar = DetectionGrammar(names_trie(), BIN0, BIN0 + NBINS, EOS, max_objects=2)
    gen = SequenceGenerator([model], tiny_dict(), beam_size=beam, max_len_b=13, min_len=0,
                            logits_processors=[grammar])
    best = gen.generate(sample)[0][0]
    # greedy under the grammar: bin 3 x4, the name "b" (T5 ranks above T4) continued to "b c" (T6 ranks
    # above the bins), again, then EOS: the only token left after max_objects
    one = [BIN0 + 3] * 4 + [T5, T6]
    assert best["tokens"].tolist() == one + one + [EOS]
    objects = split_objects(best["tokens"].tolist(), best["positional_scores"].tolist(), BIN0, NBINS,
                            lambda ids: " ".join("abcx"[i - 4] for i in ids))
    assert [(b, n) for b, n, _ in objects] == [([3, 3, 3, 3], "b c")] * 2
    lp = best["positional_scores"].tolist()
    assert objects[0][2] == pytest.approx(lp[4] + lp[5])


def test_split_objects_drops_an_object_cut_by_the_length_limit():
    decode = lambda ids: "+".join(map(str, ids))  # noqa: E731
    toks = [BIN0, BIN0 + 1, BIN0 + 2, BIN0 + 3, T4, BIN0, BIN0 + 1, EOS]
    out = split_objects(toks, [-0.5] * len(toks), BIN0, NBINS, decode)
    assert out == [([0, 1, 2, 3], "4", -0.5)]
    assert split_objects([EOS], [0.0], BIN0, NBINS, decode) == []
    assert split_objects([BIN0] * 4 + [EOS], [0.0] * 5, BIN0, NBINS, decode) == []  # a box without a name


# ----------------------------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def tokenizer(spm_dir):
    from ofa.tokenizer import load_tokenizer

    return load_tokenizer(spm_dir, 8192, 1000)


BOXES = "30,20,40,29,1,red circle&&2,3,12,13,2,blue square&&20,2,30,10,1,red circle"


def detection_ds(tmp_path, tokenizer, split, rows, **cfg):
    path = tmp_path / f"det_{split}.tsv"
    path.write_text("".join(f"{u}\t{png(40, 30)}\t{b}\n" for u, b in rows))
    reader = open_reader(str(path), schema="detection", columns=DetectionDataset.columns)
    return DetectionDataset(reader, tokenizer, DataConfig(patch_image_size=64, max_image_size=64, num_bins=1000,
                                                          **cfg), split)


def decode_target(tokenizer, ex):
    toks = ex["target"][:-1]
    return tokenizer.decode(toks, skip_special=False).split()


def test_detection_sample_lists_bins_and_names_by_position_in_evaluation(tmp_path, tokenizer):
    ds = detection_ds(tmp_path, tokenizer, "valid", [("7", BOXES)])
    ex = ds[0]
    assert tokenizer.decode(ex["source"][1:-1]).strip() == "what are the objects in the image?"
    # squashed 40x30 -> 64x64: x * 1.6, y * 64/30; bin = round(c / 64 * 999); ordered by y0 then x0
    words = decode_target(tokenizer, ex)
    boxes = [(2, 3, 12, 13), (20, 2, 30, 10), (30, 20, 40, 29)]
    boxes.sort(key=lambda b: (b[1], b[0]))
    expect = []
    for (x0, y0, x1, y1), name in zip(boxes, ["red circle", "blue square", "red circle"]):
        bins = [round(x0 * 1.6 / 64 * 999), round(y0 * 64 / 30 / 64 * 999), round(x1 * 1.6 / 64 * 999),
                round(y1 * 64 / 30 / 64 * 999)]
        expect += [f"<bin_{b}>" for b in bins]
    names = [w for w in words if not w.startswith("<bin_")]
    assert [w for w in words if w.startswith("<bin_")] == expect
    assert " ".join(names) == "red circle blue square red circle"
    assert ex["refs"] == [([30.0, 20.0, 40.0, 29.0], "red circle"), ([2.0, 3.0, 12.0, 13.0], "blue square"),
                          ([20.0, 2.0, 30.0, 10.0], "red circle")]
    batch = ds.collater([ex])
    assert batch["image_sizes"] == [(40, 30)] and batch["w_resize_ratios"].tolist() == [1.6]


def test_detection_training_order_is_random_per_epoch_and_reproducible(tmp_path, tokenizer):
    many = "&&".join(f"{x},{x % 20},{x + 5},{x % 20 + 5},1,obj{x}" for x in range(0, 30, 3))
    ds = detection_ds(tmp_path, tokenizer, "train", [("1", many)])
    orders = []
    for epoch in (1, 2, 1):
        ds.set_epoch(epoch)
        orders.append([w for w in decode_target(tokenizer, ds[0]) if not w.startswith("<bin_")])
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])
    assert order_objects([((5, 1, 6, 2), 1, "b"), ((0, 1, 1, 2), 1, "a"), ((9, 0, 9.5, 1), 1, "c")], False,
                         random.Random(0)) == [((9, 0, 9.5, 1), 1, "c"), ((0, 1, 1, 2), 1, "a"), ((5, 1, 6, 2), 1, "b")]


def test_detection_max_objects_and_images_without_objects(tmp_path, tokenizer):
    ds = detection_ds(tmp_path, tokenizer, "valid", [("1", BOXES), ("2", "")], max_objects=1)
    words = decode_target(tokenizer, ds[0])
    assert len([w for w in words if w.startswith("<bin_")]) == 4 and ds[0]["refs"][2][1] == "red circle"
    empty = ds[1]
    assert empty["target"].tolist() == [tokenizer.dictionary.eos()] and empty["refs"] == []


def test_detection_bad_boxes_name_the_field(tmp_path, tokenizer):
    from ofa.data_utils.errors import DataError

    ds = detection_ds(tmp_path, tokenizer, "valid", [("1", "1,2,300,4,1,cat")])
    with pytest.raises(DataError, match=r"det_valid.tsv, line 1.*boxes.*outside the 40x30 image"):
        ds[0]


def test_region_caption_source_holds_the_region_bins_and_evaluation_keeps_every_reference(tmp_path, tokenizer):
    rows = [{"uniq_id": "5", "image_id": "1", "caption": "the red circle&&a red ball", "region_coord": "2,3,12,13",
             "image": png(40, 30)}]
    path = write(tmp_path, "region_caption", rows)
    reader = open_reader(str(path), schema="region_caption", columns=RegionCaptionDataset.columns)
    cfg = DataConfig(patch_image_size=64, max_image_size=64, num_bins=1000)
    ex = RegionCaptionDataset(reader, tokenizer, cfg, "valid")[0]
    src = tokenizer.decode(ex["source"][1:-1], skip_special=False).split()
    assert " ".join(src[:-4]) == "what does the region describe? region:"
    assert src[-4:] == [f"<bin_{round(v)}>" for v in (2 * 1.6 / 64 * 999, 3 * 64 / 30 / 64 * 999,
                                                      12 * 1.6 / 64 * 999, 13 * 64 / 30 / 64 * 999)]
    assert ex["refs"] == ["the red circle", "a red ball"] and ex["region"] == [2.0, 3.0, 12.0, 13.0]
    train = RegionCaptionDataset(open_reader(str(path), schema="region_caption",
                                             columns=RegionCaptionDataset.columns), tokenizer, cfg, "train")[0]
    assert tokenizer.decode(train["target"][:-1]).strip() == "the red circle"
    assert math.isclose(float(len(train["source"])), float(len(ex["source"])))


def reference_state(grammar, row):
    """The grammar's state walked token by token (the obvious loop the vectorised ``state`` must equal)."""
    bins, node, objects = 0, -1, 0
    for tok in row[1:]:
        if grammar.bin_start <= tok < grammar.bin_end:
            if bins in (0, 4):
                objects, bins = objects + 1, 1
            else:
                bins += 1
            node = 0 if bins == 4 else -1
        else:
            node = grammar.names.compile().step(torch.tensor([node]), torch.tensor([tok]))[0].item()
    return bins, node, objects


def test_grammar_state_equals_a_token_by_token_walk_on_random_valid_prefixes():
    g = DetectionGrammar(names_trie(), BIN0, BIN0 + NBINS, EOS, max_objects=5)
    rng = random.Random(0)
    rows = []
    for _ in range(60):  # random prefixes the grammar allows, of mixed lengths, as one batch
        row = [BOS]
        for _ in range(rng.randint(0, 20)):
            options = sorted(allowed(g, row[1:]) - {EOS})
            if not options:
                break
            row.append(rng.choice(options))
        rows.append(row)
    for length in {len(r) for r in rows}:
        batch = [r for r in rows if len(r) == length]
        bins, node, objects = g.state(torch.tensor(batch))
        for i, r in enumerate(batch):
            assert (bins[i].item(), node[i].item(), objects[i].item()) == reference_state(g, r), r


def test_the_onnx_export_refuses_the_object_grammar_in_one_line():
    from ofa.export.onnx_export import generator_settings

    grammar = DetectionGrammar(names_trie(), BIN0, BIN0 + NBINS, EOS)
    gen = SequenceGenerator([PreferenceModel()], tiny_dict(), logits_processors=[grammar])
    with pytest.raises(ValueError, match="the DetectionGrammar decoding constraint is not exported to ONNX"):
        generator_settings(gen)


def test_boxes_with_inverted_corners_and_classes_outside_the_list_agree_with_pycocotools():
    gt = {0: [((0, 0, 10, 10), "a"), ((5, 5, 30, 30), "zebra")], 1: [((2, 2, 8, 8), "a")]}
    dt = {0: [((20, 0, 10, 10), "a", 0.9), ((0, 0, 10, 10), "a", 0.5)], 1: [((2, 2, 8, 8), "a", 0.7)]}
    cats = ["a"]  # "zebra" is not in the class list: left out by both
    assert coco_map(gt, dt, cats) == pytest.approx(pycocotools_map(gt, dt, cats), abs=1e-12)


@pytest.fixture()
def detection_task(tmp_path, spm_dir):
    import ofa.tasks  # noqa: F401  (registers the tasks)
    from ofa.tasks.detection import DetectionConfig, DetectionTask

    names = tmp_path / "classes.txt"
    names.write_text("red circle\nblue square\n")
    cfg = DetectionConfig(bpe_dir=spm_dir, class_names=str(names), max_objects=5, num_workers=0, seed=1)
    return DetectionTask.setup_task(cfg)


def test_a_short_max_len_override_lowers_the_object_count_so_that_every_hypothesis_can_end(detection_task):
    per = detection_task.object_tokens()
    gen = detection_task.build_generator([PreferenceModel()], max_len_b=2 * per + 3)
    grammar = gen.constraints[-1]
    assert grammar.max_objects == 2 and gen.max_len_b == 2 * per + 3
    gen = detection_task.build_generator([PreferenceModel()], max_len_b=3)
    assert gen.constraints[-1].max_objects == 0  # room for no object: only EOS
    assert detection_task.build_generator([PreferenceModel()]).constraints[-1].max_objects == 5


def test_validation_ap_is_derived_from_the_task_and_leaves_nothing_in_saved_meters(detection_task):
    """fairseq saves the run's meters in every checkpoint and rebuilds them by class name on resume: the AP
    must not live in a custom meter. It is derived from the task's accumulator, reset per validation."""
    from fairseq import metrics

    class Criterion:
        @staticmethod
        def reduce_metrics(logging_outputs):
            pass

    gt = [((0.0, 0.0, 10.0, 10.0), "red circle")]
    dets = [[((0.0, 0.0, 10.0, 10.0), "red circle", 0.9)], [((50.0, 50.0, 60.0, 60.0), "red circle", 0.9)]]
    detection_task.begin_valid_epoch(1, None)
    with metrics.aggregate("valid_test_det") as agg:
        for det in dets:  # one validation batch each
            detection_task._validated = True
            detection_task._pending.append((gt, det))
            detection_task.reduce_metrics([{}], Criterion())
        expected = coco_map({0: gt, 1: gt}, {0: dets[0], 1: dets[1]}, ["red circle", "blue square"])
        assert agg.get_smoothed_values()["ap50"] == round(expected["AP50"], 4) == round(51 / 101, 4)
        state = agg.state_dict()
    assert all(cls != "DetectionMeter" for _, _, cls, _ in state)
    metrics.load_state_dict({"valid_test_det": state})
    detection_task.begin_valid_epoch(2, None)
    assert detection_task.validation_summary() == {"AP": 0.0, "AP50": 0.0}
