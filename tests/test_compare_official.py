"""bench/compare_official.py: the speed comparison with the official OFA code.

The full run needs a checkout of OFA-Sys/OFA named by ``OFA_OFFICIAL_CHECKOUT`` (and ../shared/ofa_bpe); it
is skipped without one. The one-line errors for a missing or wrong checkout and a missing BPE folder need
neither and always run. The script is loaded from its file (``bench`` is not a package).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "compare_official.py"
OFFICIAL = os.environ.get("OFA_OFFICIAL_CHECKOUT")


@pytest.fixture(scope="module")
def bench():
    name = "compare_official_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("compare_official: error: "), lines
    return lines[0]


def test_a_missing_official_checkout_is_one_line_and_exit_status_2(bench, tmp_path, capsys):
    status = bench.main(["--official", str(tmp_path / "no_such_checkout"), "--bpe-dir", str(tmp_path)])
    assert status == 2
    line = _one_error_line(capsys)
    assert "official OFA checkout not found" in line and "no_such_checkout" in line


def test_no_official_checkout_given_is_one_line(bench, monkeypatch, capsys):
    monkeypatch.delenv("OFA_OFFICIAL_CHECKOUT", raising=False)
    assert bench.main([]) == 2
    assert "pass --official PATH" in _one_error_line(capsys)


def test_a_folder_that_is_not_an_ofa_checkout_and_a_missing_bpe_folder_are_one_line(bench, tmp_path, capsys):
    assert bench.main(["--official", str(tmp_path), "--bpe-dir", str(tmp_path)]) == 2
    assert "is not an OFA checkout" in _one_error_line(capsys)
    fake = tmp_path / "checkout"
    (fake / "models" / "ofa").mkdir(parents=True)
    (fake / "models" / "ofa" / "unify_transformer.py").write_text("")
    assert bench.main(["--official", str(fake), "--bpe-dir", str(tmp_path / "no_bpe")]) == 2
    assert "BPE folder not found" in _one_error_line(capsys)
    assert bench.main(["--official", str(fake), "--bpe-dir", str(tmp_path), "--parts", "trian"]) == 2
    assert "did you mean train" in _one_error_line(capsys)


def test_processes_must_be_at_least_one(bench, tmp_path, capsys):
    fake = tmp_path / "checkout"
    (fake / "models" / "ofa").mkdir(parents=True)
    (fake / "models" / "ofa" / "unify_transformer.py").write_text("")
    (tmp_path / "dict.txt").write_text("")
    assert bench.main(["--official", str(fake), "--bpe-dir", str(tmp_path), "--processes", "0"]) == 2
    assert "--processes: must be at least 1, got 0" in _one_error_line(capsys)


def test_each_process_runs_once_and_writes_its_own_file_whatever_the_spelling(bench):
    for argv in (["--official", "O", "--processes", "3", "--arch", "ofa_base", "--out", "a.json", "--quick"],
                 ["--official", "O", "--processes=3", "--out=a.json", "--arch", "ofa_base", "--quick"],
                 ["--official", "O", "--proc", "3", "--ou", "a.json", "--arch", "ofa_base", "--quick"]):
        cfg = bench.parse_args(bench.child_argv(argv, "/tmp/run0.json"))
        assert cfg.processes == 1 and cfg.out == "/tmp/run0.json"
        assert cfg.arch == "ofa_base" and cfg.quick and cfg.official == "O"


def _run_json(ratios):
    parts = {name: {"unit": "samples", "ratio_project_over_official": r, "official": {"rate_median": 1.0},
                    "project": {"rate_median": r}} for name, r in ratios.items()}
    return {"environment": {"torch": "x"}, "config": {"arch": "ofa_tiny", "processes": 1, "out": "f.json"},
            "params": 7, "agreement": {"ok": True}, "parts": parts}


def test_combined_runs_report_the_median_run_per_part_and_every_ratio(bench):
    runs = [_run_json({"eval": 1.6, "beam": 2.1}), _run_json({"eval": 1.8, "beam": 1.9}),
            _run_json({"eval": 1.5, "beam": 2.0})]
    combined = bench.combine_runs(runs)
    assert combined["parts"]["eval"]["ratio_project_over_official"] == 1.6  # the middle of 1.5, 1.6, 1.8
    assert combined["parts"]["eval"]["median_run"] == 0 and combined["parts"]["beam"]["median_run"] == 2
    assert combined["parts"]["eval"]["project"]["rate_median"] == 1.6
    assert combined["parts"]["beam"]["ratios"] == [2.1, 1.9, 2.0]
    assert combined["parts"]["beam"]["ratio_range"] == [1.9, 2.1]
    assert combined["config"]["processes"] == 3 and combined["config"]["out"] is None
    assert len(combined["runs"]) == 3 and combined["agreement"] == {"ok": True}
    two = bench.combine_runs(runs[:2])  # an even count takes the lower middle run
    assert two["parts"]["eval"]["ratio_project_over_official"] == 1.6


@pytest.mark.slow
@pytest.mark.skipif(not OFFICIAL, reason="set OFA_OFFICIAL_CHECKOUT to a checkout of OFA-Sys/OFA")
def test_quick_run_agrees_with_the_official_code_and_times_every_part(bench, bpe_dir, tmp_path):
    import fairseq.models

    registry_before = (fairseq.models.MODEL_REGISTRY.get("ofa"), fairseq.models.ARCH_MODEL_REGISTRY.get("ofa_tiny"))
    modules_before = {k: sys.modules.get(k) for k in ("data", "models", "utils")}
    threads = torch.get_num_threads()
    out = tmp_path / "compare.json"
    try:
        status = bench.main(["--official", OFFICIAL, "--bpe-dir", bpe_dir, "--arch", "ofa_tiny", "--quick",
                             "--parts", "train,eval,beam,trie", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    result = json.loads(out.read_text())

    agreement = result["agreement"]
    assert agreement["ok"] and agreement["derived_buffers_equal"]
    assert agreement["logits_max_abs_diff"] <= 1e-4
    assert agreement["beam_tokens_equal"] and agreement["trie_tokens_equal"]
    assert agreement["trie_answers_in_trie"]
    assert agreement["beam_tokens_per_sample"] == [result["config"]["tgt_len"]] * result["config"]["batch_size"]
    assert not agreement["arch_mismatches"]

    assert set(result["parts"]) == {"train", "eval", "beam", "trie"}
    for part in result["parts"].values():
        for side in ("official", "project"):
            assert part[side]["median_s"] > 0 and part[side]["rate_median"] > 0
        assert part["ratio_project_over_official"] > 0
    train = result["parts"]["train"]
    assert train["project_step_gflop"] > 0 and train["first_loss_abs_diff"] < 1e-3 * train["first_loss"]["project"]

    env = result["environment"]
    assert env["official_commit"] and env["threads"] == 2 and env["torch"] == torch.__version__
    # the official import left no trace: the project's registrations and the top-level names are as before
    assert (fairseq.models.MODEL_REGISTRY.get("ofa"), fairseq.models.ARCH_MODEL_REGISTRY.get("ofa_tiny")) == \
        registry_before
    assert {k: sys.modules.get(k) for k in ("data", "models", "utils")} == modules_before
