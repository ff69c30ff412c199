"""Distributed CPU training (torchrun + gloo) and resuming: the results match a single uninterrupted run."""
from __future__ import annotations

import os
import subprocess
import sys


from test_tasks_e2e import bench, train_args  # noqa: F401  (fixture reuse)

from ofa.checkpoint import safe_load
from ofa.cli.train import train as train_main


def weights(path):
    return {k: v.float() for k, v in safe_load(str(path))["model"].items() if v.is_floating_point()}


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def common(bench, save, updates, batch, sgd=False):
    args = train_args("refcoco", bench, save, ["--freeze-resnet", "--disable-validation", "--save-interval-updates", "2"])
    args[args.index("--max-update") + 1] = str(updates)
    args[args.index("--batch-size") + 1] = str(batch)
    if sgd:  # updates linear in the gradient (see the test below)
        args[args.index("--optimizer") + 1] = "sgd"
        args[args.index("--lr") + 1] = "0.1"
    return args


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(bench, tmp_path):
    single = tmp_path / "single"
    train_main(common(bench, single, 2, 8, sgd=True))
    double = tmp_path / "double"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "ofa.cli.train", *common(bench, double, 2, 4, sgd=True)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distributed init" in out.stdout + out.stderr
    a, b = weights(single / "checkpoint_last.pt"), weights(double / "checkpoint_last.pt")
    # SGD, not Adam: Adam divides by the gradient's own magnitude, so a weight whose gradient is float
    # noise (~1e-9) moves by about +-lr either way, and summation order (gloo all-reduce vs one batch,
    # thread counts) decides which. With SGD the difference stays at float-noise level, while a wrong
    # global batch (ranks reading the same rows, gradients summed instead of averaged) moves weights by
    # lr x gradient, orders of magnitude more.
    assert max_diff(a, b) < 1e-5


def test_a_run_stopped_mid_epoch_resumes_to_the_same_result(bench, tmp_path):
    straight = tmp_path / "straight"
    train_main(common(bench, straight, 4, 4))
    resumed = tmp_path / "resumed"
    train_main(common(bench, resumed, 2, 4))  # stops after 2 of the epoch's batches
    state = safe_load(str(resumed / "checkpoint_last.pt"))
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] == 2
    train_main(common(bench, resumed, 4, 4))  # picks up checkpoint_last.pt
    assert max_diff(weights(straight / "checkpoint_last.pt"), weights(resumed / "checkpoint_last.pt")) == 0.0


def test_two_process_evaluation_equals_one_process(bench, tmp_path):
    import json

    from ofa.cli.evaluate import evaluate_command as evaluate_main

    save = tmp_path / "ckpt"
    train_main(common(bench, save, 2, 4))
    single = tmp_path / "single"
    evaluate_main([f"{bench}/refcoco_test.tsv", "--path", str(save / "checkpoint_last.pt"),
                   "--results-path", str(single), "--batch-size", "4"])
    double = tmp_path / "double"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
           "-m", "ofa.cli.evaluate", f"{bench}/refcoco_test.tsv", "--path", str(save / "checkpoint_last.pt"),
           "--results-path", str(double), "--batch-size", "4"]
    out = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    one = json.loads((single / "test_predict.json").read_text())
    two = json.loads((double / "test_predict.json").read_text())
    assert sorted(one, key=lambda r: r["uniq_id"]) == sorted(two, key=lambda r: r["uniq_id"])  # no row lost or doubled
    m1 = json.loads((single / "test_metrics.json").read_text())
    m2 = json.loads((double / "test_metrics.json").read_text())
    assert (m1["acc"], m1["count"]) == (m2["acc"], m2["count"])
