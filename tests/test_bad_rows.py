"""``--bad-rows skip`` everywhere: bad rows are counted once, batches left empty are dropped (or run with zero
weight while other ranks train) without an update, and evaluation's CIDEr pass skips them too.

The training files are hand-made caption TSVs; the reader's shuffled order (``seed + epoch``) is computed
here so that the bad rows land exactly in the batches a test wants empty.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from data_helpers import caption_rows, write
from ofa.checkpoint import safe_load
from ofa.cli.empty_batches import install, no_stand_in_message, step_decision, usable_dummy
from ofa.data_utils.bad_rows import SkippedRows, add_counts, describe
from ofa.data_utils.datasets import CaptionDataset, DataConfig
from ofa.data_utils.errors import DataError
from ofa.data_utils.readers import TSVReader
from ofa.tasks.ofa_task import CollateWithSkippedRows, SkippedRowsBatchIterator, first_good_batch, is_empty_batch
from ofa.tokenizer import load_tokenizer

SEED = 1
BAD_IMAGE = "bm90IGFuIGltYWdl"  # base64 of "not an image"


@pytest.fixture(scope="module")
def tok(spm_dir):
    return load_tokenizer(spm_dir)


def order(n: int, epoch: int = 1) -> np.ndarray:
    """The training reader's row order in ``epoch`` (readers.py: ``default_rng(seed + epoch)``)."""
    return np.random.default_rng(SEED + epoch).permutation(n)


def caption_file(tmp_path, name, n, bad, broken_line=False):
    """``n`` caption rows, rows ``bad`` with an undecodable image; ``broken_line`` appends a row with too few
    columns (it breaks the reading of the references themselves)."""
    rows = caption_rows(n)
    for g in bad:
        rows[int(g)]["image"] = BAD_IMAGE
    path = write(tmp_path, "caption", rows, name=name)
    if broken_line:
        with open(path, "a", encoding="utf-8") as f:
            f.write("99\t199\ta broken row\n")
    return path


def dataset(path, tok, split="train", rank=0, world=1, shuffle=False):
    reader = TSVReader(path, "caption", columns=CaptionDataset.columns, rank=rank, world_size=world,
                       shuffle=shuffle, seed=SEED)
    return CaptionDataset(reader, tok, DataConfig(patch_image_size=32, bad_rows="skip"), split)


# ---------------------------------------------------------------------------------------- counting
def test_a_bad_row_read_again_is_counted_once(tmp_path, tok):
    ds = dataset(caption_file(tmp_path, "c.tsv", 6, bad=[1, 4]), tok, shuffle=True)
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        for _ in range(2):
            assert sum(ds[i] is None for i in range(len(ds))) == 2
    assert ds.skipped == 2
    assert ds.skipped_rows.by_file() == {ds.reader.path: 2}


def test_rows_found_by_loader_workers_reach_the_main_process_once(tmp_path, tok):
    ds = dataset(caption_file(tmp_path, "c.tsv", 6, bad=[0, 1, 4]), tok)
    batches = [np.arange(i, min(i + 2, 6)) for i in range(0, 6, 2)]
    itr = SkippedRowsBatchIterator(dataset=ds, collate_fn=CollateWithSkippedRows(ds), batch_sampler=batches,
                                   num_workers=1)
    assert not is_empty_batch(itr.first_batch)  # rows 0 and 1 are bad: the dummy is row 2, which builds
    assert int(itr.first_batch["id"][0]) == 2
    for _ in range(2):  # two epochs, each in a fresh worker process
        sizes = [0 if is_empty_batch(b) else b["nsentences"] for b in itr.next_epoch_itr(shuffle=False)]
        assert sizes == [0, 2, 1]
    assert ds.skipped == 3


def test_padding_rows_are_counted_by_the_rank_that_owns_them(tmp_path, tok):
    path = caption_file(tmp_path, "c.tsv", 3, bad=[0])  # 2 ranks: rank 1 re-reads row 0 as padding
    ranks = [dataset(path, tok, rank=r, world=2) for r in range(2)]
    for ds in ranks:
        [ds[i] for i in range(len(ds))]
    assert [ds.skipped for ds in ranks] == [1, 0]
    assert add_counts(*(ds.skipped_rows.by_file() for ds in ranks)) == {path: 1}


def test_skipped_rows_log_and_its_line():
    log = SkippedRows()
    assert log.add("a.tsv", 3) and not log.add("a.tsv", 3) and log.add("b.tsv", 3)
    assert log.take_fresh() == [("a.tsv", 3), ("b.tsv", 3)] and log.take_fresh() == []
    copy = SkippedRows()
    copy.merge([("a.tsv", 3), ("a.tsv", 5)])
    assert len(copy) == 2 and ("a.tsv", 5) in copy and copy.take_fresh() == []
    assert describe({"a.tsv": 2, "b.tsv": 1}) == "skipped 2 bad rows of a.tsv, 1 of b.tsv"
    assert describe({"a.tsv": 1}) == "skipped 1 bad row of a.tsv" and describe({}) == ""


def test_step_decisions_and_the_dummy_batch(tmp_path, tok):
    assert step_decision(0, 0) == "drop" and step_decision(0, 1) == "drop"
    assert step_decision(1, 0) == "run" and step_decision(2, 1) == "stuck"
    assert not usable_dummy(None) and not usable_dummy("DUMMY") and not usable_dummy({})
    assert is_empty_batch([{}, {}]) and not is_empty_batch([{}, {"id": 1}])
    assert "no row builds on 1 of 2 ranks" in no_stand_in_message("t.tsv", 1, 2)
    ds = dataset(caption_file(tmp_path, "c.tsv", 3, bad=[0, 1, 2]), tok)
    assert first_good_batch(ds) == {} and ds.skipped == 3


# ---------------------------------------------------------------------------------------- training
def train_args(train, valid, spm_dir, save, batch=2, epochs=1, workers=0):
    return [f"{train},{valid}", "--task", "caption", "--bpe-dir", spm_dir, "--arch", "ofa_test", "--cpu",
            "--patch-image-size", "32", "--batch-size", str(batch), "--max-epoch", str(epochs),
            "--optimizer", "adam", "--lr", "1e-3", "--criterion", "adjust_label_smoothed_cross_entropy",
            "--save-dir", str(save), "--no-epoch-checkpoints", "--log-format", "simple",
            "--num-workers", str(workers), "--batch-size-valid", "4", "--seed", str(SEED), "--bad-rows", "skip",
            "--eval-beam", "2", "--eval-max-len-b", "4", "--best-checkpoint-metric", "cider",
            "--maximize-best-checkpoint-metric"]


def nonempty_batches(bad, n, batch, epoch, rank=0, world=1):
    """How many of this rank's batches in ``epoch`` keep a row."""
    o = order(n, epoch)
    per_rank = -(-n // world)
    rows = [int(o[(i * world + rank) % n]) for i in range(per_rank)]
    return sum(any(g not in bad for g in rows[i:i + batch]) for i in range(0, per_rank, batch))


def updates_and_adam_steps(path):
    state = safe_load(str(path))
    steps = {int(s["step"]) for s in state["last_optimizer_state"]["state"].values()}
    return state["optimizer_history"][-1]["num_updates"], steps


@pytest.fixture(scope="module")
def first_batch_bad_run(tmp_path_factory, spm_dir):
    """Two epochs of 8 rows in batches of 2 (one loader worker): epoch 1's first batch is all bad; the
    validation file has a bad image and a row with too few columns."""
    from ofa.cli.train import train

    install()
    tmp = tmp_path_factory.mktemp("bad_first")
    bad = {int(g) for g in order(8, 1)[:2]}
    train_file = caption_file(tmp, "train.tsv", 8, bad)
    valid_file = caption_file(tmp, "valid.tsv", 4, bad=[2], broken_line=True)
    save = tmp / "ckpt"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("ofa.train").addHandler(handler)
    try:
        train(train_args(train_file, valid_file, spm_dir, save, epochs=2, workers=1))
    finally:
        logging.getLogger("ofa.train").removeHandler(handler)
    expected = sum(nonempty_batches(bad, 8, 2, e) for e in (1, 2))
    return {"save": save, "expected": expected, "lines": [r.getMessage() for r in records],
            "train": train_file, "valid": valid_file}


def test_a_run_whose_first_batch_is_all_bad_trains_one_update_per_nonempty_batch(first_batch_bad_run):
    run = first_batch_bad_run
    assert run["expected"] == 3 + nonempty_batches(set(order(8, 1)[:2].tolist()), 8, 2, 2)
    updates, steps = updates_and_adam_steps(run["save"] / "checkpoint_last.pt")
    assert updates == run["expected"] and steps == {run["expected"]}  # no optimizer step for the empty batch


def test_training_reports_the_distinct_bad_rows_once_per_epoch(first_batch_bad_run):
    run = first_batch_bad_run
    train_lines = [line for line in run["lines"] if line.startswith("train (epoch")]
    assert train_lines == [f"train (epoch {e}): skipped 2 bad rows of {run['train']} (--bad-rows skip)"
                           + ("; 1 batch with no good row on any rank dropped (no update)" if e == 1 else "")
                           for e in (1, 2)]
    valid_lines = [line for line in run["lines"] if line.startswith("valid:")]
    assert valid_lines and set(valid_lines) == {f"valid: skipped 2 bad rows of {run['valid']} (--bad-rows skip)"}


def test_two_cpu_processes_train_when_one_ranks_first_batch_is_all_bad(tmp_path, spm_dir):
    """12 rows, 2 ranks, batches of 2: rank 1's first batch is all bad (rank 0's is not: rank 1 runs a
    zero-weight dummy built from a good row), and the second batch is all bad on both ranks (dropped)."""
    o = order(12, 1)
    bad = {int(o[p]) for p in (1, 3, 4, 5, 6, 7)}  # rank r, batch b reads positions r + 4b and r + 4b + 2
    train_file = caption_file(tmp_path, "train.tsv", 12, bad)
    valid_file = caption_file(tmp_path, "valid.tsv", 4, bad=[])
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent("""
        import sys
        from ofa.cli.empty_batches import install
        from ofa.cli.train import main
        install()
        sys.exit(main(sys.argv[1:]))
    """))
    save = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           str(launcher), *train_args(train_file, valid_file, spm_dir, save, workers=0)]
    out = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [nonempty_batches(bad, 12, 2, 1, r, 2) for r in (0, 1)] == [2, 1]
    updates, steps = updates_and_adam_steps(save / "checkpoint_last.pt")
    assert updates == 2 and steps == {2}
    assert (f"train (epoch 1): skipped 6 bad rows of {train_file} (--bad-rows skip); 1 batch with no good row "
            "on any rank dropped (no update)") in out.stdout + out.stderr


def test_ofa_setup_installs_the_empty_batch_patch():
    """Every command's start-up (``ofa.cli.common.setup``) installs it: checked in a fresh interpreter, since
    the tests above install it in this one."""
    code = ("from fairseq.trainer import Trainer\nfrom ofa.cli.common import setup\nsetup()\n"
            "assert getattr(Trainer, '_ofa_empty_batches', False), 'setup() does not call empty_batches.install()'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------- evaluation
def test_evaluate_skips_a_bad_caption_row_in_the_cider_pass_and_counts_it_once(first_batch_bad_run, tmp_path):
    from ofa.cli.evaluate import evaluate_command

    test_file = caption_file(tmp_path, "test.tsv", 3, bad=[], broken_line=True)
    checkpoint = str(first_batch_bad_run["save"] / "checkpoint_last.pt")
    with pytest.raises(DataError, match=r"test.tsv"):
        evaluate_command([test_file, "--path", checkpoint, "--results-path", str(tmp_path / "r0"),
                          "--no-progress-bar", "--bad-rows", "fail"])
    results = tmp_path / "results"
    evaluate_command([test_file, "--path", checkpoint, "--results-path", str(results), "--no-progress-bar",
                      "--batch-size", "2", "--bad-rows", "skip"])
    metrics = json.loads((results / "test_metrics.json").read_text())
    assert metrics["skipped_rows"] == 1 and metrics["count"] == 3
    assert torch.isfinite(torch.tensor(metrics["cider"]))
