"""Mistakes and bad inputs, one table: each case is what a person types (or calls), the one line the
command answers (``PROG: error: ...`` on stderr, no traceback), its exit status, and a check that nothing
was lost (every file that was there is unchanged, no ``.partial`` file is left).

Beside the table: the things a clean run must do that were asked for with the mistakes (quiet output,
TensorBoard curves, a finished run re-run does nothing, file permissions from the umask, stale partial
files removed).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest


# ---------------------------------------------------------------------------------------------- the world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 16-image embedded benchmark at 64 px, its SentencePiece tokenizer and a caption checkpoint trained
    for two updates (``ofa_test``)."""
    from ofa.cli.train import train
    from ofa.tokenizer import train_sentencepiece
    from ofa_synth.writer import main as synth_main

    root = tmp_path_factory.mktemp("mistakes")
    data = root / "data"
    synth_main([str(data), "--num-images", "16", "--image-size", "64", "--seed", "0", "--quiet"])
    train_sentencepiece(str(data / "text_corpus.txt"), str(root / "tok"), vocab_size=400)
    assert train(train_args(root)) == 0
    return root


def train_args(root: Path, save: str = "ckpt", drop: Tuple[str, ...] = (), **replace) -> List[str]:
    """An ``ofa-train`` command line for a 2-update caption run; ``drop`` removes options (with their value),
    ``replace`` changes values (``task="x"``, ``data="..."``)."""
    d = root / "data"
    options = {
        "data": f"{d}/caption_train.tsv,{d}/caption_valid.tsv", "--task": "caption", "--bpe-dir": str(root / "tok"),
        "--arch": "ofa_test", "--patch-image-size": "64", "--batch-size": "4", "--max-update": "2",
        "--optimizer": "adam", "--lr": "1e-3", "--criterion": "adjust_label_smoothed_cross_entropy",
        "--save-dir": str(root / save), "--log-format": "simple", "--num-workers": "0", "--seed": "1",
        "--eval-max-len-b": "4", "--validate-interval-updates": "2", "--batch-size-valid": "8",
    }
    for key, value in replace.items():
        options[key if key == "data" else "--" + key.replace("_", "-")] = value
    argv = [options.pop("data")] if "data" not in drop else []
    for key, value in options.items():
        if key not in drop:
            argv += [key, value]
    return argv + ["--cpu", "--no-epoch-checkpoints"]


def ckpt(root: Path) -> str:
    return str(root / "ckpt" / "checkpoint_last.pt")


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    prog: str
    argv: Callable[[Path], List[str]]
    status: int
    message: str  # in the one error line (status 2), or in stdout (status 0)
    writes: Tuple[str, ...] = field(default=())  # files the command may create or change (relative to the world)


def _mains() -> Dict[str, Callable]:
    from ofa.cli.evaluate import main as evaluate
    from ofa.cli.train import main as train
    from ofa.tokenizer import main as tokenizer
    from ofa.vqgan.cli import main as vqgan
    from ofa_synth.cli import main as synth

    return {"ofa-train": train, "ofa-evaluate": evaluate, "ofa-tokenizer": tokenizer, "ofa-vqgan": vqgan,
            "ofa-synth": synth}


def _eval(root: Path, *extra: str, data: str = "caption_test.tsv") -> List[str]:
    return [str(root / "data" / data), "--path", ckpt(root), "--results-path", str(root / "results"),
            "--no-progress-bar", *extra]


CASES = [
    # ofa-train
    Case("train: task name typo", "ofa-train", lambda r: train_args(r, task="captoin"),
         2, "--task: unknown task 'captoin'; did you mean caption"),
    Case("train: data file missing", "ofa-train", lambda r: train_args(r, "t1", data=f"{r}/nope.tsv,{r}/nope.tsv"),
         2, "nope.tsv"),
    Case("train: no --bpe-dir", "ofa-train", lambda r: train_args(r, "t2", drop=("--bpe-dir",)),
         2, "--bpe-dir is required"),
    Case("train: --bpe-dir that does not exist", "ofa-train", lambda r: train_args(r, "t3", bpe_dir=f"{r}/no_tok"),
         2, "no_tok"),
    Case("train: no batch size", "ofa-train", lambda r: train_args(r, "t4", drop=("--batch-size",)),
         2, "no batch size: give --batch-size N"),
    Case("train: a finished run again", "ofa-train", lambda r: train_args(r),
         0, "nothing to do"),
    # ofa-evaluate
    Case("evaluate: --help with no checkpoint", "ofa-evaluate", lambda r: ["--help"], 0, "usage: ofa-evaluate"),
    Case("evaluate: no --path", "ofa-evaluate", lambda r: [str(r / "data" / "caption_test.tsv")],
         2, "the following arguments are required: --path"),
    Case("evaluate: checkpoint missing", "ofa-evaluate",
         lambda r: [str(r / "data" / "caption_test.tsv"), "--path", str(r / "nope.pt")], 2, "nope.pt"),
    Case("evaluate: a refcoco TSV for a caption checkpoint", "ofa-evaluate", lambda r: _eval(r, data="refcoco_test.tsv"),
         2, "refcoco_test.tsv looks like a refcoco TSV (5 columns); the checkpoint is caption"),
    Case("evaluate: a VQA TSV for a caption checkpoint", "ofa-evaluate", lambda r: _eval(r, data="vqa_test.tsv"),
         2, "looks like a vqa TSV (6 columns); the checkpoint is caption"),
    Case("evaluate: task name typo", "ofa-evaluate", lambda r: _eval(r, "--task", "refcoc"),
         2, "unknown task 'refcoc'; did you mean refcoco"),
    Case("evaluate: data file missing", "ofa-evaluate", lambda r: _eval(r, data="nope_test.tsv"),
         2, "data file not found"),
    Case("evaluate: --nbest above the beam", "ofa-evaluate", lambda r: _eval(r, "--beam", "2", "--nbest", "3"),
         2, "--nbest 3 is more than the beam size 2"),
    Case("evaluate: --batch-size 0", "ofa-evaluate", lambda r: _eval(r, "--batch-size", "0"),
         2, "--batch-size must be at least 1"),
    Case("evaluate: an option of no task", "ofa-evaluate", lambda r: _eval(r, "--shuffle"),
         2, "unrecognized arguments: --shuffle"),
    # the other commands
    Case("synth: command typo", "ofa-synth", lambda r: ["generat", str(r / "x")], 2,
         "unknown command 'generat'; did you mean generate"),
    Case("tokenizer: tokenizer folder missing", "ofa-tokenizer",
         lambda r: ["encode", "--bpe-dir", str(r / "no_tok"), "hello"], 2, "no_tok"),
    Case("tokenizer: corpus missing", "ofa-tokenizer",
         lambda r: ["train", "--corpus", str(r / "no.txt"), "--out", str(r / "tok2")], 2, "no.txt"),
    Case("vqgan: checkpoint missing", "ofa-vqgan",
         lambda r: ["info", "--model", str(r / "no_vq")], 2, "no_vq"),
]


def _snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_is_one_line_and_loses_nothing(case, world, capsys):
    before = _snapshot(world)
    status = _mains()[case.prog](case.argv(world))
    out, err = capsys.readouterr()
    assert status == case.status, (out, err)
    assert "Traceback" not in err
    if case.status == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith(f"{case.prog}: error: "), err
        assert case.message in lines[-1], lines[-1]
    else:
        assert case.message in out, out
    after = _snapshot(world)
    changed = [p for p, s in before.items() if after.get(p) != s and not p.startswith(case.writes or ("\0",))]
    assert not changed, f"{case.id} changed or removed {changed}"
    assert not [p for p in after if p.endswith(".partial")]


# ---------------------------------------------------------------------------------------------- clean runs
def test_import_ofa_leaves_the_root_logger_alone_and_prints_nothing():
    code = ("import logging, warnings; warnings.simplefilter('default'); root = logging.getLogger(); "
            "before = (root.level, list(root.handlers)); import ofa; "
            "assert (root.level, list(root.handlers)) == before, (root.level, root.handlers); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert out.stderr == "", out.stderr[-2000:]


def test_training_is_quiet_writes_tensorboard_curves_and_keeps_the_umask(world, capfd, tmp_path):
    """One run through the console entry: none of the stack's noise on stderr, TensorBoard event files for
    the training and validation curves, and the checkpoints' permissions from the umask (027 here)."""
    from ofa.cli.train import main

    save = tmp_path / "ckpt"
    old = os.umask(0o027)
    try:
        status = main(train_args(world, str(save), tensorboard_logdir=str(tmp_path / "tb")))
    finally:
        os.umask(old)
    _, err = capfd.readouterr()
    assert status == 0, err[-3000:]
    for noise in ("pin_memory", "torch.jit", "tensorboardX", "strict flag", "Warning"):
        assert noise not in err, f"{noise!r} in stderr"
    events = {p.parent.name for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}
    assert {"train", "valid"} <= events, events
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        assert stat.S_IMODE((save / name).stat().st_mode) == 0o640, name


def test_evaluate_lists_only_evaluation_options_and_takes_fairseq_generate_names(world, capsys):
    from ofa.cli.evaluate import main

    assert main(["--path", ckpt(world), "--help"]) == 0
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    assert usage.count("data") == 1 and "[data]" in usage
    for listed in ("--beam", "--eval-beam", "--lenpen", "--max-len-b", "--eval-cider-cached-tokens", "--bad-rows"):
        assert listed in out, listed
    for training_only in ("--shuffle", "--image-backbone-lr-scale", "--num-workers", "--seed"):
        assert training_only not in out, training_only


def test_evaluate_nbest_keeps_the_best_hypotheses_with_their_logprobs(world, tmp_path, capsys):
    from ofa.cli.evaluate import main

    old = os.umask(0o077)
    try:
        assert main(_eval(world, "--beam", "3", "--nbest", "2", "--results-path", str(tmp_path))) == 0
    finally:
        os.umask(old)
    records = json.loads((tmp_path / "test_predict.json").read_text())
    assert records and all(len(r["nbest"]) == 2 for r in records)
    assert all(r["nbest"][0]["logprob"] >= r["nbest"][1]["logprob"] for r in records)
    assert stat.S_IMODE((tmp_path / "test_metrics.json").stat().st_mode) == 0o600


def test_a_partial_file_left_by_a_killed_run_is_removed_by_the_next_write(tmp_path):
    from ofa.io_utils import write_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"metrics.json.{int(dead.stdout)}.abc123.partial"
    stale.write_text("half")
    mine = tmp_path / f"metrics.json.{os.getpid()}.xyz.partial"  # a live writer's file stays
    mine.write_text("live")
    write_atomic(str(tmp_path / "metrics.json"), "{}")
    assert not stale.exists() and mine.exists()
    assert (tmp_path / "metrics.json").read_text() == "{}"
