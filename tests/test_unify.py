"""Pretraining (``unify``): sample construction of every sub-task, the mixture cadence, the [v1, v2]
pair and a few CPU training steps on tiny synthetic sources (docs/tasks.md 3)."""
from __future__ import annotations

import logging
import math
import os
import re

import pytest
import torch
from PIL import Image

from ofa.data_utils import unify_dataset as U
from ofa.data_utils.images import encode_image
from ofa.data_utils.pretrain_transforms import center_crop
from ofa.data_utils.readers import open_reader
from ofa.data_utils.transforms import to_tensor
from ofa.data_utils.unify_dataset import NegativePools, UnifyDataConfig, UnifyDataset


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Embedded benchmark (8 images, 64 px) + tokenizer + pretraining sources with a tiny random VQGAN."""
    from ofa_synth.writer import main as synth_main
    from ofa_synth.pretrain import main as pretrain_main
    from ofa.tokenizer import load_tokenizer, train_sentencepiece
    from ofa.vqgan import VQGAN, VQGANConfig

    out = tmp_path_factory.mktemp("unify")
    synth_main([str(out / "bench"), "--num-images", "8", "--image-size", "64", "--seed", "0", "--quiet"])
    train_sentencepiece(str(out / "bench" / "text_corpus.txt"), str(out / "tok"), vocab_size=400)
    torch.manual_seed(0)
    vq = VQGAN(VQGANConfig(ch=8, ch_mult=(1, 1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                           embed_dim=8, n_embed=64, norm_groups=4, quantizer="vq"))
    os.makedirs(out / "vq")
    torch.save({"config": dict(vq.config.__dict__), "state_dict": vq.state_dict()}, out / "vq" / "model.pt")
    pretrain_main([str(out / "pre"), "--num-images", "20", "--image-size", "64", "--vqgan", str(out / "vq"),
                   "--code-image-size", "32", "--num-code-images", "4", "--quiet"])
    # one full-size (256 px, 256 codes) image-infilling row, as the official files hold
    img = Image.new("RGB", (256, 256), (200, 30, 30))
    codes = " ".join(str(i % 64) for i in range(256))
    (out / "image256.tsv").write_text(f"7\t{encode_image(img)}\t{codes}\n")
    return out, load_tokenizer(str(out / "tok"))


def make_ds(src, patch=64, code=32, split="train", extras=True, **kw):
    out, tok = src
    cfg = UnifyDataConfig(patch_image_size=patch, code_image_size=code, max_src_length=80, max_tgt_length=30, **kw)
    reader = open_reader(str(out / "pre" / "pretrain_vl.tsv"), schema="pretrain_vl", columns=list(UnifyDataset.columns))
    ds = UnifyDataset(reader, tok, cfg, split)
    if extras:
        ds.attach_extras(
            open_reader(str(out / "pre" / "pretrain_text.tsv"), schema="pretrain_text", columns=["uniq_id", "text"]),
            open_reader(str(out / "pre" / "pretrain_image.tsv"), schema="pretrain_image",
                        columns=["uniq_id", "image", "code"]),
            open_reader(str(out / "pre" / "pretrain_detection.tsv"), schema="pretrain_detection",
                        columns=["uniq_id", "image", "boxes"]),
            NegativePools.from_dir(str(out / "pre")))
    return ds


def rows_of(ds, kind):
    names = ds.reader.column_names
    return [i for i in range(len(ds)) if ds.reader[i][names.index("type")] == kind]


def row(ds, i):
    return dict(zip(ds.reader.column_names, ds.reader[i]))


def src_eq(ds, ex, text):
    return torch.equal(ex["source"], ds.source(text))


def test_official_prompt_strings():
    assert U.CAPTION_PROMPT == " what does the image describe?"
    assert U.ITM_PROMPT.format("c") == ' does the image describe " c "?'
    assert U.ITM_QA_PROMPT.format("q", "a") == ' what is the answer to question " q ". is " a "?'
    assert U.GROUNDING_PROMPT.format("t") == ' which region does the text " t " describe?'
    assert U.REGION_CAPTION_PROMPT == "  what does the region describe? region:"
    assert U.IMAGE_PROMPT == " what is the image in the middle part?"
    assert U.DETECTION_PROMPT == " what are the objects in the image?"
    assert U.TEXT_PREFIX + " x" + U.TEXT_SUFFIX == ' what is the complete text of " x "?'


def test_caption_and_itm(src):
    ds = make_ds(src)
    answers = set()
    for i in rows_of(ds, "caption")[:12]:
        r = row(ds, i)
        cap = U.pre_caption(r["caption"], 30)
        s = ds[i]
        main, itm = s["vl"]
        assert src_eq(ds, main, U.CAPTION_PROMPT)
        assert torch.equal(main["target"], torch.cat([ds.encode(" " + cap), torch.tensor([ds.eos])]))
        assert main["patch_image"].shape == (3, 64, 64) and main["conf"] == 1.0
        ans = ds.tokenizer.decode(itm["target"]).strip()
        answers.add(ans)
        if ans == "yes":
            assert src_eq(ds, itm, U.ITM_PROMPT.format(cap))
        else:
            assert ans == "no" and not src_eq(ds, itm, U.ITM_PROMPT.format(cap))
            assert ds.tokenizer.decode(itm["source"]).strip().startswith("does the image describe")
    assert answers == {"yes", "no"}


def test_qa_and_itm_qa(src):
    ds = make_ds(src)
    answers = set()
    for i in rows_of(ds, "qa")[:12]:
        r = row(ds, i)
        q = U.pre_question(r["question"], 80)
        refs = U.parse_answers(r["refs"])
        a = max(refs, key=refs.get)
        main, itm = ds[i]["vl"]
        assert src_eq(ds, main, " " + q) and main["conf"] == pytest.approx(refs[a])
        assert torch.equal(main["target"][:-1], ds.encode(" " + a))
        ans = ds.tokenizer.decode(itm["target"]).strip()
        answers.add(ans)
        if ans == "yes":
            assert src_eq(ds, itm, U.ITM_QA_PROMPT.format(q, a))
        else:
            assert not src_eq(ds, itm, U.ITM_QA_PROMPT.format(q, a))
    assert answers == {"yes", "no"}


@pytest.mark.parametrize("patch", [64, 384])
def test_grounding_and_grounded_captioning(src, patch):
    ds = make_ds(src, patch=patch)
    v = ds.tokenizer.vocab
    for i in rows_of(ds, "visual_grounding")[:3]:
        r = row(ds, i)
        main, region = ds[i]["vl"]
        bins = main["target"][:-1]
        assert len(bins) == 4 and bool((bins >= v.bin_start).all())
        b = bins - v.bin_start
        assert int(b.max()) <= round(patch / 512 * 999) and int(b.min()) >= 0
        if patch == 384:
            assert int(b.max()) <= 0.75 * 999
        assert b[2] >= b[0] and b[3] >= b[1]
        text = U.pre_caption(r["caption"], 80)
        assert src_eq(ds, main, U.GROUNDING_PROMPT.format(text))
        expect = torch.cat([torch.tensor([ds.bos]), ds.encode("  what does the region describe? region:"), bins,
                            torch.tensor([ds.eos])])
        assert torch.equal(region["source"], expect)
        assert torch.equal(region["target"][:-1], ds.encode(" " + U.pre_caption(r["caption"], 30)))


def test_valid_split_has_main_examples_only(src):
    ds = make_ds(src, split="valid")
    assert all(len(ds[i]["vl"]) == 1 and not ds[i]["extras"] for i in range(10))
    assert isinstance(ds.collater([ds[i] for i in range(4)]), dict)


def test_text_infilling(src):
    ds = make_ds(src)
    ex = ds.extra_examples(0)[0]
    text_row = dict(zip(ds.text_reader.column_names, ds.text_reader[0]))
    tokens = ds.encode(" " + text_row["text"].strip().lower())
    assert torch.equal(ex["target"], torch.cat([tokens, torch.tensor([ds.eos])]))
    mask = ds.tokenizer.vocab.mask
    assert int((ex["source"] == mask).sum()) >= 1
    prefix = ds.encode(U.TEXT_PREFIX)
    assert torch.equal(ex["source"][1:1 + len(prefix)], prefix)
    assert ex["conf"] == 2.0 and ex["patch_mask"] is False and not ex["code_mask"]
    assert ex["patch_image"].shape == (3, 64, 64) and float(ex["patch_image"].abs().sum()) == 0.0


def test_image_infilling_full_size(src):
    out, tok = src
    ds = make_ds(src, code=128, extras=False)
    ds.attach_extras(image_reader=open_reader(str(out / "image256.tsv"), schema="pretrain_image",
                                              columns=["uniq_id", "image", "code"]))
    (ex,) = ds.extra_examples(0)
    v = tok.vocab
    assert len(ex["target"]) == 257 and int(ex["target"][-1]) == ds.eos
    assert torch.equal(ex["target"][:-1] - v.code_start, torch.tensor([i % 64 for i in range(256)]))
    assert tok.dictionary[int(ex["target"][0])] == "<code_0>"
    img = ex["patch_image"]
    assert img.shape == (3, 256, 256)
    assert float(img[:, 64:192, 64:192].abs().sum()) == 0.0
    assert float(img[:, :64].abs().min()) > 0  # outside the centre the red image is kept
    assert src_eq(ds, ex, U.IMAGE_PROMPT) and ex["code_mask"] and ex["patch_mask"] and ex["conf"] == 2.0


def test_detection_targets(src):
    ds = make_ds(src, code=128)
    ds.image_reader = None  # the demo codes are for a 32 px centre
    v = ds.tokenizer.vocab
    seen = 0
    for block in range(6):
        ex = [e for e in ds.extra_examples(block) if src_eq(ds, e, U.DETECTION_PROMPT)][0]
        assert ex["patch_image"].shape == (3, 256, 256) and ex["conf"] == 2.0
        tgt = ex["target"][:-1].tolist()
        is_bin = [t >= v.bin_start for t in tgt]
        k = 0
        while k < len(tgt):  # 4 bins, then the label's text tokens
            assert all(is_bin[k:k + 4]), tgt
            bins = [t - v.bin_start for t in tgt[k:k + 4]]
            # coordinates / 512 lie in [0, 0.5]; the edge 0.5 * 999 = 499.5 rounds to bin 500 (as officially)
            assert all(0 <= b <= round(0.5 * (ds.cfg.num_bins - 1)) for b in bins)
            assert bins[2] > bins[0] and bins[3] > bins[1]
            k += 4
            label = []
            while k < len(tgt) and not is_bin[k]:
                label.append(tgt[k])
                k += 1
            name = ds.tokenizer.decode(label).strip()
            assert re.fullmatch(r"(red|green|blue|yellow|purple|orange) (circle|square|triangle|diamond|star)", name)
            seen += 1
    assert seen > 0


def test_extras_cadence_and_pair(src):
    ds = make_ds(src)
    n = 24
    flags = [ds.has_extras(i) for i in range(n)]
    assert [i for i, f in enumerate(flags) if f] == [7, 15, 23]
    batch = ds.collater([ds[i] for i in range(8)])
    assert isinstance(batch, list) and len(batch) == 2
    v1, v2 = batch
    assert v1["nsentences"] == 16 and v2["nsentences"] == 4
    assert v1["net_input"]["patch_images"].shape[-1] == 64 and v2["net_input"]["patch_images"].shape[-1] == 64
    assert v2["net_input"]["code_masks"].tolist() == [False, False, True, False]
    assert v2["conf"].tolist() == [2.0] * 4
    assert v2["net_input"]["patch_masks"].tolist() == [False, False, True, True]
    assert "code_masks" not in v1["net_input"]
    assert isinstance(ds.collater([ds[i] for i in range(7)]), dict)  # no extras: v1 only


def test_synth_pretrain_keeps_held_out_pairs_out(src):
    import json

    out, _ = src
    m = json.loads((out / "pre" / "pretrain_manifest.json").read_text())
    held = [" ".join(c) for c in m["held_out_combos"]]
    for name in ("pretrain_vl.tsv", "pretrain_text.tsv", "pretrain_detection.tsv"):
        for line in open(out / "pre" / name):
            fields = [f for f in line.rstrip("\n").split("\t") if len(f) < 2000]  # skip images
            text = " ".join(fields).lower()
            assert not any(h in text for h in held), (name, line[:200])
    assert m["files"]["pretrain_image.tsv"] > 0


def test_synth_pretrain_without_vqgan_writes_no_codes(tmp_path):
    from ofa_synth.pretrain import main as pretrain_main

    pretrain_main([str(tmp_path), "--num-images", "3", "--image-size", "48", "--quiet"])
    assert not (tmp_path / "pretrain_image.tsv").exists()
    assert (tmp_path / "pretrain_vl.tsv").stat().st_size > 0


def test_pretraining_steps(src, tmp_path, caplog):
    from ofa.cli.train import train as train_main

    caplog.set_level(logging.INFO)
    out, _ = src
    pre = out / "pre"
    train_main([str(pre / "pretrain_vl.tsv"), "--task", "unify", "--bpe-dir", str(out / "tok"),
                "--text-data", str(pre / "pretrain_text.tsv"), "--image-data", str(pre / "pretrain_image.tsv"),
                "--detection-data", str(pre / "pretrain_detection.tsv"), "--neg-sample-dir", str(pre),
                "--code-image-size", "32", "--arch", "ofa_test", "--cpu", "--patch-image-size", "64",
                "--batch-size", "4", "--extras-every", "4", "--max-update", "2", "--optimizer", "adam", "--lr", "1e-3",
                "--criterion", "adjust_label_smoothed_cross_entropy", "--sample-patch-num", "8",
                "--clip-norm", "5.0", "--save-dir", str(tmp_path / "ckpt"), "--no-save", "--disable-validation",
                "--log-format", "simple", "--log-interval", "1", "--num-workers", "0",
                "--seed", "1"])
    text = caplog.text
    losses = [float(x) for x in re.findall(r"\bloss=([0-9.]+|nan|inf)", text)]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), text[-2000:]
    # every batch was a [v1, v2] pair (one block of extras per 4 V-L rows)
    assert len(re.findall(r"loss_v2=[0-9.]+", text)) == 2


def test_vl_images_untouched_without_augment_and_scale(src):
    """--no-vl-rand-augment --vl-max-scale 1: a caption row's image is the file's image, normalised (the
    embedded scenes' colours and positions are labels); the official default changes some of them."""
    plain = make_ds(src, extras=False, vl_max_scale=1.0, vl_rand_augment=False)
    official = make_ds(src, extras=False)
    changed = 0
    for i in rows_of(plain, "caption")[:8]:
        img = plain.image(row(plain, i)["image"])
        want = to_tensor(center_crop(img, 64), plain.mean, plain.std)
        assert torch.equal(plain[i]["vl"][0]["patch_image"], want)
        changed += not torch.equal(official[i]["vl"][0]["patch_image"], want)
    assert changed > 0
