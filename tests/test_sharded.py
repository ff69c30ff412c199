"""Fully-sharded training (``--ddp-backend fully_sharded``, torch FSDP) on two CPU processes (torchrun + gloo):
the same losses, weights and optimizer state as one unsharded process with the same global batch, whole
checkpoints that ``ofa.load_model`` reads, and a sharded run that resumes from its own checkpoint."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from test_tasks_e2e import bench, train_args  # noqa: F401  (fixture reuse)

import ofa
from ofa.checkpoint import safe_load
from ofa.cli.sharded import check_config
from ofa.cli.train import train as train_main

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def args_for(bench, save, updates, batch, log):
    # SGD with momentum, not Adam (see test_distributed.py): float-noise gradients stay noise, and the
    # momentum buffers are optimizer state that must be gathered at a save and re-sharded at a resume
    args = train_args("refcoco", bench, save, ["--freeze-resnet", "--disable-validation", "--momentum", "0.9",
                                               "--log-format", "json", "--log-interval", "1", "--log-file", str(log)])
    for flag, value in (("--max-update", updates), ("--batch-size", batch), ("--optimizer", "sgd"), ("--lr", 0.1)):
        args[args.index(flag) + 1] = str(value)
    return args


def losses(log):
    """``{update: loss}`` from fairseq's per-update json lines in a ``--log-file``."""
    out = {}
    for line in log.read_text().splitlines():
        if line.startswith('{"'):  # (the config is logged as a Python dict, '{'_name'...)
            record = json.loads(line)
            if "loss" in record and "num_updates" in record:
                out[int(record["num_updates"])] = float(record["loss"])
    return out


def sharded(args, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "ofa.cli.train", *args, "--ddp-backend", "fully_sharded", "--verbose"]
    out = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "fully sharded over 2 processes (torch FSDP" in out.stdout + out.stderr


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_sharded_cpu_processes_match_one_process_and_resume(bench, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # fairseq logs its stats at INFO (pytest leaves the root at WARNING)
    single = tmp_path / "single"
    train_main(args_for(bench, single, 3, 8, tmp_path / "single.log"))
    one = losses(tmp_path / "single.log")
    assert sorted(one) == [1, 2, 3]

    double, log = tmp_path / "double", tmp_path / "double.log"
    sharded(args_for(bench, double, 2, 4, log), 29541)  # stops after 2 updates ...
    sharded(args_for(bench, double, 3, 4, log), 29542)  # ... and resumes for the 3rd
    two = losses(log)
    assert sorted(two) == [1, 2, 3]
    for update in one:
        assert two[update] == pytest.approx(one[update], rel=1e-4), update

    # whole checkpoints, in the unsharded layout: the same weights through ofa.load_model
    a, b = single / "checkpoint_last.pt", double / "checkpoint_last.pt"
    model_a, _, _ = ofa.load_model(str(a))
    model_b, _, _ = ofa.load_model(str(b))
    assert max_diff(model_a.state_dict(), model_b.state_dict()) < 1e-5
    state_a, state_b = safe_load(str(a)), safe_load(str(b))
    assert state_b["optimizer_history"][-1]["num_updates"] == 3
    # the momentum buffers: gathered from both ranks, parameters numbered like an unsharded run's
    opt_a, opt_b = state_a["last_optimizer_state"], state_b["last_optimizer_state"]
    assert [g["params"] for g in opt_a["param_groups"]] == [g["params"] for g in opt_b["param_groups"]]
    shared = set(opt_a["state"]) & set(opt_b["state"])
    assert len(shared) > 0.9 * len(opt_a["state"])
    assert max_diff({i: opt_a["state"][i]["momentum_buffer"] for i in shared},
                    {i: opt_b["state"][i]["momentum_buffer"] for i in shared}) < 1e-5


def test_options_fully_sharded_cannot_honour_are_refused_in_one_line():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from ofa.cli.common import setup

    setup()
    base = ["data", "--task", "caption", "--arch", "ofa_test", "--batch-size", "2", "--cpu",
            "--ddp-backend", "fully_sharded"]

    def problem(*extra):
        args = options.parse_args_and_arch(options.get_training_parser(), [*base, *extra])
        return check_config(convert_namespace_to_omegaconf(args))

    assert problem() is None
    assert "--bf16" in problem("--bf16")
    assert "--use-sharded-state" in problem("--use-sharded-state")
    assert "--store-ema" in problem("--store-ema")
    assert "--fp16 on CPU" in problem("--fp16")
