"""``experiments/profile_parts.py`` runs every part on a small model and prints its timing and profiler table."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments import profile_parts

REPO = Path(__file__).resolve().parents[2]
BPE = Path(os.environ.get("OFA_SHARED_DIR", REPO.parent / "shared")) / "ofa_bpe"  # as the project's tests find it


@pytest.mark.skipif(not (BPE / "dict.txt").exists(), reason="the official GPT-2 BPE folder is not available")
@pytest.mark.parametrize("part", profile_parts.PARTS)
def test_every_part_prints_its_time_and_profile(part, capsys):
    assert profile_parts.main(["--part", part, "--arch", "ofa_test", "--bpe-dir", str(BPE), "--batch-size", "2",
                               "--image-size", "64", "--tgt-len", "4", "--repeats", "1", "--rows", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{part}, ofa_test, batch 2, 64 px") and "median" in out and "Self CPU" in out


def test_a_missing_tokenizer_folder_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("OFA_BPE_DIR", raising=False)
    with pytest.raises(SystemExit) as e:
        profile_parts.main(["--part", "eval"])
    assert e.value.code == 2
