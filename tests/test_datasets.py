"""Per-task datasets build fairseq samples with the official prompts, targets and extras."""
from __future__ import annotations

import pytest
import torch

from data_helpers import refcoco_rows, write
from ofa.data_utils.datasets import DATASETS, DataConfig
from ofa.data_utils.errors import DataError
from ofa.data_utils.readers import TSVReader
from ofa.tokenizer import load_tokenizer

SIZE = 32


def dataset(tmp_path, task, tok, rows=None, split="train", **cfg):
    path = write(tmp_path, task, rows)
    cls = DATASETS[task]
    reader = TSVReader(path, task, columns=cls.columns)
    return cls(reader, tok, DataConfig(patch_image_size=SIZE, **cfg), split)


@pytest.fixture(scope="module")
def tok(spm_dir):
    return load_tokenizer(spm_dir)


def test_caption_batch_has_the_fairseq_layout(tmp_path, tok):
    ds = dataset(tmp_path, "caption", tok)
    batch = ds.collater([ds[0], ds[1]])
    net = batch["net_input"]
    assert net["patch_images"].shape == (2, 3, SIZE, SIZE) and net["patch_masks"].tolist() == [True, True]
    assert net["src_tokens"][0, 0] == tok.dictionary.bos() and net["src_tokens"][0, -1] == tok.dictionary.eos()
    assert tok.decode(net["src_tokens"][0]) == "what does the image describe?"
    assert torch.equal(net["prev_output_tokens"][:, 1:], batch["target"][:, :-1])
    assert tok.decode(batch["target"][0]) == "a red square number 0"
    assert batch["ntokens"] == int(batch["target"].ne(tok.dictionary.pad()).sum())


def test_caption_eval_target_joins_all_references(tmp_path, tok):
    ds = dataset(tmp_path, "caption", tok, split="valid")
    ex = ds[0]
    assert ex["refs"] == ["a red square number 0", "a square 0"]
    assert tok.decode(ex["target"]) == "a red square number 0&&a square 0"


def test_refcoco_target_is_four_bins_and_ratios_map_back(tmp_path, tok):
    ds = dataset(tmp_path, "refcoco", tok)
    ex = ds[0]
    v = tok.vocab
    assert ex["target"][:-1].ge(v.bin_start).all() and ex["target"].numel() == 5
    batch = ds.collater([ex])
    # box 10,7.5,30,22.5 on a 40x30 image -> x * 32/40, y * 32/30 -> / 512 * 999
    bins = (batch["target"][0, :4] - v.bin_start).tolist()
    assert bins == [round(8 / 512 * 999), round(8 / 512 * 999), round(24 / 512 * 999), round(24 / 512 * 999)]
    assert batch["w_resize_ratios"].tolist() == [pytest.approx(SIZE / 40)] and batch["region_coords"].tolist() == [[10, 7.5, 30, 22.5]]
    assert "which region does the text" in tok.decode(batch["net_input"]["src_tokens"][0])


def test_vqa_picks_the_most_confident_answer_and_keeps_confidences(tmp_path, tok):
    ds = dataset(tmp_path, "vqa", tok)
    ex = ds[0]
    assert tok.decode(ex["target"]) == "red" and ex["conf"] == 1.0
    assert ex["ref_dict"] == {"red": 1.0, "orange": 0.3}
    assert tok.decode(ex["source"]) == "what color is the square?"


def test_prev_output_prompt_pads_prompt_targets_and_sets_prefix_tokens(tmp_path, tok):
    ds = dataset(tmp_path, "vqa", tok, prompt_type="prev_output")
    ex = ds[0]
    src = ex["source"]
    assert torch.equal(ex["prev_output_tokens"][: len(src) - 1], src[:-1])
    n_answer = ex["target"].ne(tok.dictionary.pad()).sum().item()
    assert tok.decode(ex["target"][-n_answer:]) == "red"
    batch = ds.collater([ex, ds[1]])
    assert torch.equal(batch["prefix_tokens"][0], src[1:-1])


def test_snli_ve_maps_labels_and_classification_keeps_names(tmp_path, tok):
    ds = dataset(tmp_path, "snli_ve", tok)
    assert [tok.decode(ds[i]["target"]) for i in range(3)] == ["yes", "no", "maybe"]
    ds = dataset(tmp_path, "image_classify", tok)
    assert tok.decode(ds[1]["target"]) == "blue circle" and ds[1]["ref_dict"] == {"blue circle": 1.0}
    # the classification TSV has no id column: predictions are keyed by the row's line number
    assert [ds[i]["uniq_id"] for i in range(3)] == [0, 1, 2]


def test_bad_row_fails_with_its_location_by_default_and_is_skipped_on_request(tmp_path, tok):
    rows = refcoco_rows(3)
    rows[1]["region_coord"] = "10,5,90,20"
    ds = dataset(tmp_path, "refcoco", tok, rows)
    with pytest.raises(DataError, match=r"refcoco.tsv, line 2, field 'region_coord'"):
        ds[1]
    skipping = dataset(tmp_path, "refcoco", tok, rows, bad_rows="skip")
    batch = skipping.collater([skipping[i] for i in range(3)])
    assert skipping.skipped == 1 and batch["nsentences"] == 2


def test_text_only_rows_get_a_masked_dummy_image(tmp_path, tok):
    ds = dataset(tmp_path, "caption", tok)
    ex = dict(ds[0], patch_image=None, patch_mask=False)
    batch = ds.collater([ex, ds[1]])
    assert batch["net_input"]["patch_masks"].tolist() == [False, True]
    assert batch["net_input"]["patch_images"][0].abs().sum() == 0
