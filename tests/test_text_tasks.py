"""Text-only tasks: Gigaword summarisation, GLUE classification, text infilling.

One shared fixture writes the embedded text data (``ofa_synth/text.py``) and a 400-piece
SentencePiece tokenizer. The prompt / label data of every GLUE dataset is checked without a model;
gigaword, sst2, mnli and text_infilling each train 2 updates of ``ofa_test`` on the CPU and are
evaluated with ``ofa-evaluate``.
"""
from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
import torch

from ofa.cli.evaluate import evaluate_command as evaluate_main
from ofa.cli.train import train as train_main
from ofa.data_utils.datasets import DataConfig
from ofa.data_utils.readers import open_reader
from ofa.data_utils.text_datasets import (GLUE, GLUE_DATASETS, SummaryDataset, TextDataConfig, TextInfillingDataset,
                                          word_start_flags)
from ofa.tokenizer import load_tokenizer

GLUE_NAMES = ("cola", "sst2", "mrpc", "qqp", "mnli", "rte", "qnli")
# task -> (file prefix, extra training flags, metric, other metrics expected in ofa-evaluate's output)
E2E = {
    "gigaword": ("gigaword", ["--eval-beam", "2", "--eval-max-len-b", "8", "--noise-ratio", "0.2"], "rougeL",
                 ["rouge1", "rouge2"]),
    "sst2": ("sst2", [], "acc", []),
    "mnli": ("mnli", [], "acc", []),
    "text_infilling": ("text", [], "token_acc", ["lm_ppl"]),
}


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from ofa_synth.text import main as synth_text_main
    from ofa.tokenizer import train_sentencepiece

    out = tmp_path_factory.mktemp("synth_text")
    assert synth_text_main([str(out), "--num", "32", "--seed", "0", "--quiet"]) == 0
    train_sentencepiece(str(out / "text_tasks_corpus.txt"), str(out / "tok"), vocab_size=400)
    return out


@pytest.fixture(scope="module")
def tok(text_data):
    return load_tokenizer(str(text_data / "tok"))


SCHEMAS = {SummaryDataset: "text_pair", TextInfillingDataset: "pretrain_text",
           **{cls: GLUE[name].schema for name, cls in GLUE_DATASETS.items()}}


def dataset(cls, path, tok, split="valid", cfg=None):
    reader = open_reader(str(path), schema=SCHEMAS[cls], columns=cls.columns)
    return cls(reader, tok, cfg or TextDataConfig(max_src_length=512, max_tgt_length=64), split)


# ------------------------------------------------------------------------------------------ data
def test_synth_text_is_deterministic_and_complete(text_data, tmp_path):
    from ofa_synth.text import generate

    files = generate(str(tmp_path), num=32, seed=0)
    for name in files:
        assert filecmp.cmp(tmp_path / name, text_data / name, shallow=False), name
    manifest = json.loads((text_data / "text_manifest.json").read_text())
    for prefix in ("gigaword", "text") + GLUE_NAMES:
        assert manifest["files"][f"{prefix}_train.tsv"] == 32 and manifest["files"][f"{prefix}_test.tsv"] == 8
    assert generate(str(tmp_path / "other"), num=32, seed=1) and not filecmp.cmp(
        tmp_path / "other" / "gigaword_train.tsv", text_data / "gigaword_train.tsv", shallow=False)


def test_gigaword_headline_names_the_first_sentence_objects(text_data):
    for line in open(text_data / "gigaword_train.tsv"):
        _, source, target = line.rstrip("\n").split("\t")
        first = source.split(" . ")[0].split()
        assert all(w in first for w in target.split()) and len(source.split()) > 3 * len(target.split())


# ------------------------------------------------------------------------------------------ GLUE prompt data
def test_glue_tasks_are_registered_from_the_prompt_data():
    from fairseq.tasks import TASK_REGISTRY

    assert set(GLUE) == set(GLUE_NAMES)
    for name in GLUE_NAMES:
        cls = TASK_REGISTRY[name]
        assert cls.spec is GLUE[name] and cls.dataset_cls is GLUE_DATASETS[name]
        assert tuple(cls.default_answers) == GLUE[name].answers
        assert set(GLUE[name].labels.values()) <= set(GLUE[name].answers)
    assert GLUE["cola"].best == "mcc" and GLUE["mrpc"].metrics == GLUE["qqp"].metrics == ("f1",)
    assert GLUE["mnli"].labels["0"] == "maybe" and GLUE["mnli"].labels["neutral"] == "maybe"
    assert GLUE["rte"].template == GLUE["mnli"].template


OFFICIAL_PROMPTS = {
    "cola": ' is the text " {0} " grammatically correct?',
    "sst2": ' is the sentiment of text " {0} " positive or negative?',
    "mrpc": ' does text1 " {0} " and text2 " {1} " have the same semantics?',
    "qqp": ' is question " {0} " and question " {1} " equivalent?',
    "mnli": ' can text1 " {0} " imply text2 " {1} "?',
    "rte": ' can text1 " {0} " imply text2 " {1} "?',
    "qnli": ' does " {1} " contain the answer to question " {0} "?',
}


@pytest.mark.parametrize("name", GLUE_NAMES)
def test_glue_samples_follow_the_official_prompt_and_packing(name, text_data, tok):
    spec = GLUE[name]
    ds = dataset(GLUE_DATASETS[name], text_data / f"{name}_valid.tsv", tok,
                 cfg=DataConfig(max_src_length=512, prompt_type="src"))
    fields = open(text_data / f"{name}_valid.tsv").readline().rstrip("\n").split("\t")
    texts = [" ".join(t.lower().split()) for t in fields[:-1]]
    ex = ds[0]
    assert tok.decode(ex["source"]) == OFFICIAL_PROMPTS[name].format(*texts).strip()
    label = spec.labels[fields[-1]]
    assert ex["ref_dict"] == {label: 1.0} and ex["refs"] == [label] and ds[2]["uniq_id"] == 2
    # prompt_type src: the decoder reads the whole source, the only targets are the label tokens (no EOS)
    label_tokens = tok.encode(" " + label)
    assert torch.equal(ex["decoder_prompt"], ex["source"])
    assert torch.equal(ex["prev_output_tokens"], torch.cat([ex["source"], label_tokens[:-1]]))
    target = ex["target"]
    assert len(target) == len(ex["prev_output_tokens"])
    assert torch.equal(target[target.ne(tok.dictionary.pad())], label_tokens)
    batch = ds.collater([ds[i] for i in range(3)])
    assert batch["refs"] and batch["prefix_tokens"].size(0) == 3 and not batch["net_input"]["patch_masks"].any()


def test_glue_label_errors_and_aliases(text_data, tok):
    ds = dataset(GLUE_DATASETS["rte"], text_data / "rte_valid.tsv", tok)
    assert ds.label_word("not_entailment") == "no" and ds.label_word("0") == "yes" and ds.label_word("yes") == "yes"
    from ofa.data_utils.errors import DataError

    with pytest.raises(DataError, match="label"):
        ds.label_word("maybe")


@pytest.mark.parametrize("prompt_type", ["src", "none"])
def test_glue_constraint_masks_match_the_per_position_trie_walk(prompt_type, text_data):
    from fairseq.tasks import TASK_REGISTRY

    from ofa.tasks.text_classify import GlueConfig

    cfg = GlueConfig(data=str(text_data / "mnli_valid.tsv"), bpe_dir=str(text_data / "tok"), seed=1, num_workers=0,
                     prompt_type=prompt_type)
    task = TASK_REGISTRY["mnli"].setup_task(cfg)  # "maybe" is several pieces here: a real trie walk
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(3)])
    fast = task.add_constraints(dict(batch))["constraint_masks"]
    prev, aset = batch["net_input"]["prev_output_tokens"], task.answer_set
    forced = torch.tensor([len(p) - 1 for p in batch["decoder_prompts"]])
    slow = torch.stack([aset.constraint.allowed(prev[:, : j + 1], forced, aset.vocab_size) for j in range(prev.size(1))], 1)
    assert torch.equal(fast, slow)


def test_official_file_layouts_load_with_selected_cols(text_data, tmp_path):
    from fairseq.tasks import TASK_REGISTRY

    from ofa.tasks.summarization import GigawordConfig
    from ofa.tasks.text_classify import GlueConfig

    qqp = tmp_path / "qqp_official.tsv"  # id, qid1, qid2, question1, question2, is_duplicate
    qqp.write_text("7\t1\t2\tWhat color is the star ?\twhich color does the star have ?\t1\n")
    giga = tmp_path / "giga_official.tsv"  # article, headline
    giga.write_text("a red circle was seen left of a blue square .\tred circle left of blue square\n")
    for name, cfg_cls, path, cols in (("qqp", GlueConfig, qqp, "3,4,5"), ("gigaword", GigawordConfig, giga, "0,1")):
        cfg = cfg_cls(data=str(path), bpe_dir=str(text_data / "tok"), selected_cols=cols, seed=1, num_workers=0)
        task = TASK_REGISTRY[name].setup_task(cfg)
        task.load_dataset("valid")
        ex = task.dataset("valid")[0]
        assert ex["uniq_id"] == 0
        text = task.tokenizer.decode(ex["source"])
        assert ("what color is the star" in text) if name == "qqp" else ("left of a blue square" in text)
        assert ex["refs"] == (["yes"] if name == "qqp" else ["red circle left of blue square"])


def test_glue_extra_metrics():
    from ofa.tasks.text_classify import binary_f1, matthews_corrcoef

    assert binary_f1(tp=6, fp=2, fn=1) == pytest.approx(12 / 15)
    assert matthews_corrcoef(tp=6, fp=2, fn=1, tn=3) == pytest.approx(16 / (8 * 7 * 5 * 4) ** 0.5)
    assert matthews_corrcoef(tp=4, fp=4, fn=0, tn=0) == 0.0 and binary_f1(0, 0, 0) == 0.0


# ------------------------------------------------------------------------------------------ gigaword / infilling data
def test_summary_samples_and_training_noise(text_data, tok):
    path = text_data / "gigaword_train.tsv"
    source, target = open(path).readline().rstrip("\n").split("\t")[1:]
    ex = dataset(SummaryDataset, path, tok, "valid")[0]
    assert tok.decode(ex["source"]) == f'what is the summary of article " {source} "?'
    assert tok.decode(ex["target"]) == target and ex["refs"] == [target]
    assert torch.equal(ex["prev_output_tokens"][1:], ex["target"][:-1])
    cfg = TextDataConfig(max_src_length=512, max_tgt_length=64, noise_ratio=1.0)
    noisy = dataset(SummaryDataset, path, tok, "train", cfg)[0]
    assert torch.equal(noisy["target"], ex["target"])  # the target stays clean
    prev = noisy["prev_output_tokens"]
    assert prev[0] == tok.dictionary.bos() and not torch.equal(prev[1:], ex["target"][:-1])
    assert bool(((prev[1:] >= 4) & (prev[1:] < tok.vocab.code_start)).all())  # random text tokens
    short = dataset(SummaryDataset, path, tok, "valid", TextDataConfig(max_src_length=10))[0]
    assert len(short["source"]) == 12  # the prompt is cut to max_src_length tokens (+ BOS, EOS)


def test_infilling_samples(text_data, tok):
    path = text_data / "text_valid.tsv"
    line = open(path).readline().rstrip("\n").split("\t")[1]
    valid = dataset(TextInfillingDataset, path, tok, "valid")
    ex = valid[0]
    assert tok.decode(ex["target"]) == line.lower()
    src = tok.decode(ex["source"])
    assert src.startswith('what is the complete text of "') and src.endswith('"?') and "<mask>" in src
    assert int(ex["source"].eq(tok.vocab.mask).sum()) == int(ex["masked"].eq(tok.vocab.mask).sum()) >= 1
    valid.set_epoch(2)
    assert torch.equal(valid[0]["source"], ex["source"])  # validation masks are fixed
    train = dataset(TextInfillingDataset, path, tok, "train")
    first = [train[i]["source"] for i in range(len(train))]
    train.set_epoch(2)
    assert any(not torch.equal(a, train[i]["source"]) for i, a in enumerate(first))  # training re-masks
    flags = word_start_flags(tok)
    assert flags[tok.encode(" circle")[0]] and flags[tok.vocab.mask] and flags.dtype == np.bool_


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("task", list(E2E))
def test_text_task_trains_and_evaluates(task, text_data, tmp_path):
    prefix, extra, metric, others = E2E[task]
    save = tmp_path / "ckpt"
    train_main([f"{text_data}/{prefix}_train.tsv,{text_data}/{prefix}_valid.tsv", "--task", task,
                "--bpe-dir", f"{text_data}/tok", "--arch", "ofa_test", "--cpu", "--patch-image-size", "32",
                "--batch-size", "4", "--max-update", "2", "--optimizer", "adam", "--lr", "1e-3",
                "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                "--save-dir", str(save), "--no-epoch-checkpoints", "--no-save-optimizer-state",
                "--log-format", "simple", "--num-workers", "0", "--validate-interval-updates", "2",
                "--batch-size-valid", "8", "--seed", "1", "--best-checkpoint-metric", metric,
                "--maximize-best-checkpoint-metric", *extra])
    assert (save / "checkpoint_best.pt").is_file()
    results = tmp_path / "results"
    evaluate_main([f"{text_data}/{prefix}_test.tsv", "--path", str(save / "checkpoint_last.pt"),
                   "--results-path", str(results), "--batch-size", "8"])
    metrics = json.loads((results / "test_metrics.json").read_text())
    records = json.loads((results / "test_predict.json").read_text())
    assert metrics["count"] == len(records) == 8
    assert 0.0 <= metrics[metric] <= 1.0 and all(k in metrics for k in others)
    if task == "gigaword":
        assert set(records[0]) == {"hyp", "ref"} and all(0 <= metrics[k] <= 1 for k in others)
    elif task == "text_infilling":
        assert metrics["lm_ppl"] > 1.0 and "<mask>" in records[0]["masked"] and records[0]["ntokens"] > 0
    else:
        assert set(records[0]) == {"uniq_id", "hyp", "ref"}
        assert {r["hyp"] for r in records} <= set(GLUE[task].answers)
