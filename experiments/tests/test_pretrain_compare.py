"""experiments/pretrain_compare.py: pretrain on the mixture, finetune from it and from scratch, compare (smoke run)."""
import json

import pytest

from experiments import pretrain_compare as pc


@pytest.mark.slow  # about 2 minutes: twelve tool subprocesses, each starting fairseq
def test_quick_run_pretrains_reports_zero_shot_and_compares_both_arms_with_the_same_budget(tmp_path, capsys):
    out = tmp_path / "pc"
    assert pc.main(["--quick", "--out", str(out), "--tasks", "snli_ve"]) == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["pretrain_updates"] == 8 and report["backbone_lr_scale"] == 0.1
    (row,) = report["rows"]
    assert row["task"] == "snli_ve" and row["metric"] == "snli_score" and row["updates"] == 6
    for arm in ("scratch", "pretrained"):
        assert 0.0 <= row[f"{arm}_test"] <= 1.0 and 0.0 <= row[f"{arm}_comp"] <= 1.0
    # the pretrained arm really starts from the pretraining checkpoint, the scratch arm from nothing
    recipes = {arm: json.loads((out / f"finetune_{arm}" / "metrics.json").read_text())["recipe"]["snli_ve"]
               for arm in ("scratch", "pretrained")}
    assert recipes["scratch"]["init"] is None
    assert recipes["pretrained"]["init"] == str(out / "pretrain" / "checkpoint_last.pt")
    assert recipes["scratch"]["updates"] == recipes["pretrained"]["updates"] == 6
    # zero-shot from the pretraining checkpoint alone; grounding decodes exactly 4 bins per box (a unify
    # checkpoint's own generation settings do not apply; before, a short hypothesis crashed the evaluation)
    assert set(report["zero_shot"]) == {"vqa_gen", "refcoco"}
    assert 0.0 <= report["zero_shot"]["vqa_gen"]["vqa_score"] <= 1.0
    assert report["zero_shot"]["refcoco"]["count"] > 0 and 0.0 <= report["zero_shot"]["refcoco"]["acc"] <= 1.0
    assert (out / "pretrain" / "checkpoint_last.pt").is_file()
    assert "snli_ve" in capsys.readouterr().out
