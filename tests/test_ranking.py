"""``ofa.rank``: image-text matching scores on a tiny untrained model (the numbers, not their quality), and
recall@K on hand-made scores."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import ofa
from conftest import randomize_
from ofa.errors import ConfigError
from ofa.ranking import itm_logprobs, recall_at_k

PATCH = 64


@pytest.fixture(scope="module")
def ckpt(spm_dir, tmp_path_factory):
    from ofa.checkpoint import save_checkpoint
    from ofa.model import OFAModel, config_for_arch
    from ofa.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = randomize_(OFAModel.from_config(config_for_arch("ofa_test"), load_tokenizer(spm_dir).dictionary))
    root = tmp_path_factory.mktemp("rank")
    path = root / "m.pt"
    save_checkpoint(model, str(path), task_cfg={"_name": "unify", "bpe_dir": spm_dir, "patch_image_size": PATCH})
    images = []
    for i, color in enumerate(["red", "green", "blue"]):
        images.append(str(root / f"{color}.png"))
        Image.new("RGB", (40 + 10 * i, 30), color).save(images[-1])
    return str(path), images


TEXTS = ["a red circle", "a green square on the grass", "blue", "a yellow star left of a circle"]


def test_rank_texts_is_sorted_and_equals_the_unbatched_scores(ckpt):
    path, images = ckpt
    ranked = ofa.rank(path, images[0], texts=TEXTS, batch_size=3)
    assert sorted(r["index"] for r in ranked) == list(range(len(TEXTS)))
    assert [r["logprob"] for r in ranked] == sorted((r["logprob"] for r in ranked), reverse=True)
    assert all(r["text"] == TEXTS[r["index"]] and 0 < r["prob"] <= 1 for r in ranked)
    one = {r["index"]: r["logprob"] for r in ofa.rank(path, images[0], texts=TEXTS, batch_size=1)}
    for r in ranked:
        assert r["logprob"] == pytest.approx(one[r["index"]], abs=1e-5)
    assert len({round(r["logprob"], 6) for r in ranked}) > 1  # the text matters


def test_rank_images_for_a_text(ckpt):
    path, images = ckpt
    ranked = ofa.rank(path, images=images, text="a red circle", batch_size=2)
    assert sorted(r["index"] for r in ranked) == [0, 1, 2] and ranked[0]["image"] == images[ranked[0]["index"]]
    solo = ofa.rank(path, images[1], texts=["a red circle"])[0]["logprob"]
    assert {r["index"]: r["logprob"] for r in ranked}[1] == pytest.approx(solo, abs=1e-5)


def test_itm_logprob_is_the_teacher_forced_log_probability_of_yes(ckpt):
    from ofa.checkpoint import load_model
    from ofa.tokenizer import load_tokenizer

    path, _ = ckpt
    model, d, info = load_model(path)
    tok = load_tokenizer(info.bpe_dir)
    images = torch.randn(2, 3, PATCH, PATCH)
    got = itm_logprobs(model, tok, images, ["a dog", "two cats on a mat"])
    yes = tok.encode(" yes").tolist()
    for i, text in enumerate(["a dog", "two cats on a mat"]):
        src = tok.encode_line(' does the image describe " ' + text + ' "?')[None]
        prev = torch.tensor([[d.bos()] + yes[:-1]])
        with torch.no_grad():
            logits, _ = model(src, None, prev, patch_images=images[i:i + 1])
        want = logits.log_softmax(-1)[0, torch.arange(len(yes)), yes].double().sum()
        assert float(got[i]) == pytest.approx(float(want), abs=1e-5)


def test_recall_at_k_on_hand_made_scores():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.5, 0.5, 0.4]])
    r = recall_at_k(scores, [0, 0, [1, 2]], ks=(1, 2, 3))
    # query 1 hits at 1; query 2 at 2; query 3 ties 0 and 1 at 0.5: index 0 (a negative) ranks first
    assert r == {"R@1": 1 / 3, "R@2": 1.0, "R@3": 1.0}


def test_rank_mistakes_are_one_line_errors(ckpt):
    path, images = ckpt
    with pytest.raises(ConfigError, match="give an image and texts"):
        ofa.rank(path, images[0])
    with pytest.raises(ConfigError, match="needs text="):
        ofa.rank(path, images=images)
