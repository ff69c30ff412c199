"""The ``image_text_match`` task: negatives made in the training collater, the candidate texts and positives of
an evaluation split, ``--max-eval-images``, the retrieval recalls of a hand-made score matrix, and evaluation /
inference scores equal to ``ofa.ranking.itm_logprobs`` pair by pair (an untrained ``ofa_test`` model)."""
from __future__ import annotations

import pytest
import torch

from data_helpers import png, write
from ofa.data_utils.datasets import DataConfig
from ofa.data_utils.itm_dataset import FirstRows, ImageTextMatchDataset, derangement
from ofa.data_utils.readers import open_reader
from ofa.ranking import itm_logprobs

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200),
          (120, 120, 120), (250, 140, 0)]
SHAPES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def tokenizer(spm_dir):
    from ofa.tokenizer import load_tokenizer

    return load_tokenizer(spm_dir, 8192, 1000)


def train_rows(n=8):
    return [{"uniq_id": str(10 + i), "image_id": str(i), "caption": f"a {['red', 'green', 'blue', 'yellow'][i % 4]} "
             f"{SHAPES[i // 2 % 4]} number {i}", "predicted_objects": "", "image": png(40, 30, COLORS[i])}
            for i in range(n)]


def eval_rows(refs_per_image=(2, 3, 1, 2)):
    return [{"uniq_id": str(100 + i), "image_id": str(i), "predicted_objects": "", "image": png(40, 30, COLORS[i]),
             "caption": "&&".join(f"the {SHAPES[i % 4]} picture {j}" for j in range(k))}
            for i, k in enumerate(refs_per_image)]


def dataset(path, tokenizer, split):
    reader = open_reader(path, schema="caption", columns=ImageTextMatchDataset.columns)
    return ImageTextMatchDataset(reader, tokenizer, DataConfig(patch_image_size=64), split)


def words(tokenizer, tokens):
    return tokenizer.decode(tokens[tokens.ne(tokenizer.dictionary.pad())]).strip()


# ------------------------------------------------------------------------------------------- negatives
def test_training_batch_has_half_negatives_with_another_rows_caption(tmp_path, tokenizer):
    path = write(tmp_path, "caption", train_rows(8))
    ds = dataset(path, tokenizer, "train")
    own = [ds[i]["text"] for i in range(8)]
    batch = ds.collater([ds[i] for i in range(8)])
    matches = batch["matches"].tolist()
    assert matches.count(False) == 4
    eos = tokenizer.dictionary.eos()
    for i, match in enumerate(matches):
        source = words(tokenizer, batch["net_input"]["src_tokens"][i])
        assert source == f'does the image describe " {batch["texts"][i]} "?'
        target = batch["target"][i]
        assert words(tokenizer, target[target.ne(eos)]) == ("yes" if match else "no")
        assert batch["net_input"]["prev_output_tokens"][i][0] == tokenizer.dictionary.bos()
        if match:
            assert batch["texts"][i] == own[i]
        else:  # another row's caption, never its own
            assert batch["texts"][i] != own[i] and batch["texts"][i] in own
    # the dataset's samples are left as they were
    assert [ds[i]["text"] for i in range(8)] == own


def test_negatives_are_reproducible_per_epoch_and_differ_across_epochs(tmp_path, tokenizer):
    ds = dataset(write(tmp_path, "caption", train_rows(8)), tokenizer, "train")
    samples = [ds[i] for i in range(8)]

    def drawn(epoch):
        ds.set_epoch(epoch)
        batch = ds.collater(samples)
        return batch["texts"], batch["matches"].tolist()

    first = drawn(1)
    assert drawn(1) == first
    assert any(drawn(e) != first for e in (2, 3, 4))


def test_rows_of_the_same_image_or_text_do_not_make_negatives_of_each_other(tmp_path, tokenizer):
    rows = train_rows(4)
    rows[1]["image"] = rows[0]["image"]  # another caption of the same picture
    rows[3]["caption"] = rows[2]["caption"]  # the same text for another picture
    ds = dataset(write(tmp_path, "caption", rows), tokenizer, "train")
    samples = [ds[i] for i in range(4)]
    forbidden = {0: {0, 1}, 1: {0, 1}, 2: {2, 3}, 3: {2, 3}}
    texts = [s["text"] for s in samples]
    for epoch in range(1, 9):
        ds.set_epoch(epoch)
        batch = ds.collater(samples)
        assert batch["matches"].tolist().count(False) == 2
        for i, match in enumerate(batch["matches"].tolist()):
            if not match:
                assert batch["texts"][i] not in {texts[j] for j in forbidden[i]}


def test_a_batch_of_one_row_and_evaluation_batches_have_no_negatives(tmp_path, tokenizer):
    path = write(tmp_path, "caption", train_rows(4))
    train = dataset(path, tokenizer, "train")
    assert train.collater([train[0]])["matches"].tolist() == [True]
    valid = dataset(path, tokenizer, "valid")
    assert valid.collater([valid[i] for i in range(4)])["matches"].tolist() == [True] * 4


def test_derangement_moves_every_index():
    import random

    rng = random.Random(0)
    for n in range(2, 9):
        for _ in range(20):
            perm = derangement(n, rng)
            assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))


# ------------------------------------------------------------------------------------------- evaluation split
def make_task(tmp_path, spm_dir, **kw):
    from ofa.tasks.image_text_match import ImageTextMatchConfig, ImageTextMatchTask

    train = write(tmp_path, "caption", train_rows(4), name="train.tsv")
    valid = write(tmp_path, "caption", eval_rows(), name="valid.tsv")
    cfg = ImageTextMatchConfig(data=f"{train},{valid}", bpe_dir=spm_dir, patch_image_size=64, seed=1,
                               num_workers=0, **kw)
    return ImageTextMatchTask.setup_task(cfg)


def test_an_evaluation_split_gathers_every_reference_as_candidates(tmp_path, spm_dir):
    task = make_task(tmp_path, spm_dir)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    assert task.candidates == ["the circle picture 0", "the circle picture 1", "the square picture 0",
                               "the square picture 1", "the square picture 2", "the triangle picture 0",
                               "the star picture 0", "the star picture 1"]
    assert [ds[i]["refs"] for i in range(len(ds))] == [[0, 1], [2, 3, 4], [5], [6, 7]]
    batch = ds.collater([ds[i] for i in range(len(ds))])
    assert batch["refs"] == [[0, 1], [2, 3, 4], [5], [6, 7]] and batch["texts"][1] == "the square picture 0"


def test_max_eval_images_keeps_the_first_rows_and_their_texts(tmp_path, spm_dir):
    task = make_task(tmp_path, spm_dir, max_eval_images=2)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    assert len(ds) == 2 and [ds[i]["uniq_id"] for i in range(2)] == ["100", "101"]
    assert len(task.candidates) == 5 and [ds[i]["refs"] for i in range(2)] == [[0, 1], [2, 3, 4]]
    task.load_dataset("train")  # training keeps every row
    assert len(task.dataset("train")) == 4
    big = make_task(tmp_path, spm_dir, max_eval_images=50)
    big.load_dataset("valid")
    assert len(big.dataset("valid")) == 4 and len(big.candidates) == 8


def test_first_rows_slices_over_ranks_like_the_reader(tmp_path):
    path = write(tmp_path, "caption", eval_rows((1,) * 8))
    rank1 = FirstRows(open_reader(path, schema="caption", columns=("uniq_id",), rank=1, world_size=2), 5)
    assert rank1.total == 5 and len(rank1) == 3
    assert [rank1[i][0] for i in range(3)] == ["101", "103", "100"] and rank1.is_padding(2)


@pytest.mark.parametrize("option,value,message", [
    ("max_eval_images", -1, "--max-eval-images must be >= 0"),
    ("valid_batch_size", 0, "--valid-batch-size must be at least 1, got 0"),
])
def test_bad_options_are_one_line_errors(tmp_path, spm_dir, option, value, message):
    from ofa.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_task(tmp_path, spm_dir, **{option: value})


# ------------------------------------------------------------------------------------------- metrics
def test_corpus_metrics_on_a_hand_made_matrix(tmp_path, spm_dir):
    task = make_task(tmp_path, spm_dir)
    # 3 images x 5 texts; texts 0, 1 are image 0's, text 2 image 1's, texts 3, 4 image 2's
    scores = torch.tensor([
        [0.9, 0.1, 0.5, 0.2, 0.0],
        [0.7, 0.3, 0.7, 0.1, 0.2],
        [0.4, 0.6, 0.3, 0.5, 0.2],
    ])
    refs = [[0, 1], [2], [3, 4]]
    m = task.corpus_metrics(list(scores), refs)
    # image -> text: image 0's best is text 0 (hit); image 1's texts 0 and 2 tie at 0.7 and the earlier text
    # (0, not its own) ranks first (miss); image 2's best is text 1 (miss); every image's texts are in its 5 best
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["i2t_r5"] == m["i2t_r10"] == 1.0
    # text -> image: texts 0, 2, 3 find their image first; text 1 ranks image 2 first; text 4 ties images 1 and
    # 2 at 0.2 and the earlier image (1, not its own) ranks first; 3 images: every image is in the 5 best
    assert m["t2i_r1"] == pytest.approx(3 / 5) and m["t2i_r5"] == m["t2i_r10"] == 1.0
    assert m["rsum"] == pytest.approx(1 / 3 + 2 + 3 / 5 + 2)
    assert task.score(list(scores), {"refs": refs}) == [1.0, 0.0, 0.0]
    assert task.corpus_metrics([], []) == {}
    # texts of an image that was not scored (a skipped row) are left out of text -> image
    assert task.corpus_metrics(list(scores[:2]), refs[:2])["t2i_r1"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- model scores
@pytest.fixture(scope="module")
def model(tokenizer):
    from ofa.model import OFAModel, config_for_arch

    torch.manual_seed(0)
    return OFAModel.from_config(config_for_arch("ofa_test"), tokenizer.dictionary).eval()


def test_evaluation_scores_every_image_against_every_candidate_like_itm_logprobs(tmp_path, spm_dir, model):
    task = make_task(tmp_path, spm_dir, valid_batch_size=3)  # chunks of 3 pairs run across the images
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    scores = task.inference(model, batch)
    assert len(scores) == 4 and all(s.shape == (8,) for s in scores)
    images = batch["net_input"]["patch_images"]
    for i in (0, 3):  # the first and the last image, one pair per call
        pairwise = [itm_logprobs(model, task.tokenizer, images[i:i + 1], [t], 1, task.cfg.max_src_length).item()
                    for t in task.candidates]
        assert scores[i].tolist() == pytest.approx(pairwise, abs=1e-5)
    records = task.prediction_records(scores, batch)
    assert [r["uniq_id"] for r in records] == ["100", "101", "102", "103"]
    for r, s, refs in zip(records, scores, batch["refs"]):
        best = int(torch.argsort(-s.double(), stable=True)[0])
        assert len(r["top_texts"]) == 5 and r["top_texts"][0] == task.candidates[best]
        assert r["hit1"] == (best in refs)
    assert task.score(scores, batch) == [float(r["hit1"]) for r in records]


def test_the_inference_spec_gives_p_yes_of_each_pair_in_one_model_call(tmp_path, spm_dir, model):
    import base64
    import math

    import ofa.inference as inf

    task = make_task(tmp_path, spm_dir)
    spec = inf.INFERENCE[inf.canonical_task("itm")]
    assert inf.canonical_task("retrieval") == inf.canonical_task("image_text_matching") == "image_text_match"
    images = [base64.b64decode(r["image"]) for r in eval_rows()[:3]]
    texts = ["the circle picture", "a red square", "the star"]
    rows = [spec.row(img, (40, 30), t, None) for img, t in zip(images, texts)]
    sample = inf._batch(spec, task, rows, False, torch.device("cpu"), torch.float32)
    calls = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        results = spec.predict("image_text_match", task, model, sample, [(40, 30)] * 3, {})
    finally:
        hook.remove()
    assert len(calls) == 1 and len(results) == 3
    images = sample["net_input"]["patch_images"]
    for i, (r, t) in enumerate(zip(results, texts)):
        lp = itm_logprobs(model, task.tokenizer, images[i:i + 1], [t], 1).item()
        assert r["logprob"] == pytest.approx(lp, abs=1e-5)
        assert r["match"] == r["prob"] == r["score"] == pytest.approx(math.exp(r["logprob"]), rel=1e-12)
    with pytest.raises(inf.InputError, match="needs text"):
        spec.row(images[0], (40, 30), None, None)
