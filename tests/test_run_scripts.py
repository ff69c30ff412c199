"""The launch scripts in run_scripts/: syntax, self-documentation, argument handling, the commands they
build (DRY_RUN=1, no Python started), and one CPU smoke run end to end (RefCOCO: demo data, 2 updates of
``ofa_test``, one evaluation)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_SCRIPTS = REPO / "run_scripts"
TRAIN_SCRIPTS = {
    "caption_stage1": RUN_SCRIPTS / "caption" / "train_caption_stage1.sh",
    "caption_stage2": RUN_SCRIPTS / "caption" / "train_caption_stage2.sh",
    "refcoco": RUN_SCRIPTS / "refcoco" / "train_refcoco.sh",
    "vqa": RUN_SCRIPTS / "vqa" / "train_vqa.sh",
    "snli_ve": RUN_SCRIPTS / "snli_ve" / "train_snli_ve.sh",
    "image_classify": RUN_SCRIPTS / "image_classify" / "train_image_classify.sh",
    "detection": RUN_SCRIPTS / "detection" / "train_detection.sh",
    "region_caption": RUN_SCRIPTS / "region_caption" / "train_region_caption.sh",
    "image_text_match": RUN_SCRIPTS / "image_text_match" / "train_image_text_match.sh",
}
EVALUATE = RUN_SCRIPTS / "evaluate.sh"
ALL_SCRIPTS = sorted(RUN_SCRIPTS.rglob("*.sh"))
SIZES = ["tiny", "medium", "base", "large", "huge"]
NORMFORMER = ["--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle"]
LAYOUT = ["--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed",
          "--share-all-embeddings", "--layernorm-embedding", "--patch-layernorm-embedding",
          "--code-layernorm-embedding"]
# variables the scripts read: a developer's shell must not leak into the tests
SCRIPT_VARS = ["DATA", "DATA_DIR", "BPE_DIR", "CKPT_DIR", "RESTORE_FILE", "SAVE_DIR", "RESUME", "GPUS_PER_NODE",
               "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_CPU", "FP16", "NUM_WORKERS",
               "BATCH_SIZE", "UPDATE_FREQ", "MAX_EPOCH", "MAX_UPDATE", "WARMUP_UPDATES", "TRAIN_ROWS", "SMOKE",
               "SMOKE_DIR", "DEMO_DIR", "SMOKE_EVAL", "DRY_RUN", "OFA_BIN_DIR", "DATASET", "ANS2LABEL", "EMA",
               "GEN_SUBSET", "RESULTS_DIR", "CIDER_CACHED", "ADD_CAPTION", "CUDA_VISIBLE_DEVICES", "CLASS_NAMES"]


def script_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "ofa-train").exists():
        env["OFA_BIN_DIR"] = str(bin_dir)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(script, *args, cwd=None, timeout=60, **env):
    return subprocess.run(["bash", str(script), *args], cwd=cwd or REPO, env=script_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def header(script: Path) -> str:
    lines = []
    for i, line in enumerate(script.read_text().splitlines()):
        if i == 0 and line.startswith("#!"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def commands(stdout: str):
    """The commands a DRY_RUN printed ("+ cmd args", shell-quoted), as argument lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def option(argv, name):
    """The last value given to ``name`` (as ofa-train's parser would take it)."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else None


def dry_run(script, *args, **env):
    env.setdefault("FORCE_CPU", 1)
    env.setdefault("TRAIN_ROWS", 1000)
    res = run(script, *args, DRY_RUN=1, DATA_DIR="/nonexistent/data", CKPT_DIR="/nonexistent/ckpt",
              SAVE_DIR="/nonexistent/save", **env)
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert cmds, res.stdout
    return cmds[-1], res


# ------------------------------------------------------------------------------------------- static checks
def test_every_expected_script_exists():
    for path in [*TRAIN_SCRIPTS.values(), EVALUATE, RUN_SCRIPTS / "common.sh"]:
        assert path.is_file(), path
    for path in [*TRAIN_SCRIPTS.values(), EVALUATE]:
        assert os.access(path, os.X_OK), f"{path} is not executable"


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: str(p.relative_to(RUN_SCRIPTS)))
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    res = subprocess.run(["shellcheck", "-x", *map(str, ALL_SCRIPTS)], cwd=RUN_SCRIPTS,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", [*TRAIN_SCRIPTS.values(), EVALUATE], ids=lambda p: p.name)
def test_header_documents_data_launch_metric_and_demo(script):
    text = header(script)
    assert len(text.splitlines()) > 20, "the opening comment block is missing"
    low = text.lower()
    assert ".tsv" in text and ("column" in low or "layout" in low), "data layout (files, columns) not documented"
    for needle in ["CUDA_VISIBLE_DEVICES=0", "GPUS_PER_NODE=", "NNODES=", "NODE_RANK=", "MASTER_ADDR=",
                   "torchrun", "--smoke", "Expected"]:
        assert needle in text, f"{script.name}: header does not mention {needle}"
    assert "override" in low
    first = script.read_text().splitlines()
    assert first[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in first


@pytest.mark.parametrize("script", TRAIN_SCRIPTS.values(), ids=lambda p: p.name)
def test_train_header_documents_official_columns_and_gpus(script):
    text = header(script)
    assert "Official TSV" in text and "base64" in text
    assert "GPUs:" in text and "official runs use" in text


def test_help_prints_the_header():
    res = run(TRAIN_SCRIPTS["refcoco"], "--help")
    assert res.returncode == 0
    assert "Usage: train_refcoco.sh SIZE" in res.stdout and "refcoco_train.tsv" in res.stdout
    res = run(EVALUATE, "--help")
    assert res.returncode == 0 and "Usage: evaluate.sh CHECKPOINT" in res.stdout


def test_common_is_sourced_not_run():
    res = subprocess.run(["bash", str(RUN_SCRIPTS / "common.sh")], capture_output=True, text=True)
    assert res.returncode == 2 and "sourced" in res.stderr


# ------------------------------------------------------------------------------------------ argument errors
@pytest.mark.parametrize("name", list(TRAIN_SCRIPTS))
def test_unknown_size_is_a_clear_error(name):
    res = run(TRAIN_SCRIPTS[name], "xl", DRY_RUN=1)
    assert res.returncode == 2
    assert "unknown model size 'xl'" in res.stderr
    assert "tiny medium base large huge" in res.stderr
    assert not commands(res.stdout)


def test_missing_size_is_a_clear_error():
    res = run(TRAIN_SCRIPTS["vqa"], "--lr", "1e-4", DRY_RUN=1)
    assert res.returncode == 2 and "missing model size" in res.stderr and "tiny|medium|base|large|huge" in res.stderr


def test_evaluate_rejects_a_size_and_a_missing_checkpoint(tmp_path):
    res = run(EVALUATE, "large")
    assert res.returncode == 2 and "takes no model size" in res.stderr
    res = run(EVALUATE, str(tmp_path / "nope.pt"))
    assert res.returncode == 2 and "checkpoint not found" in res.stderr
    res = run(EVALUATE)
    assert res.returncode == 2 and "missing checkpoint" in res.stderr


def test_real_run_fails_early_on_missing_data(tmp_path):
    res = run(TRAIN_SCRIPTS["refcoco"], "base", FORCE_CPU=1, DATA_DIR=tmp_path, SAVE_DIR=tmp_path / "save")
    assert res.returncode == 2
    assert "data file not found" in res.stderr and "refcoco_train.tsv" in res.stderr


def test_several_nodes_need_master_addr():
    res = run(TRAIN_SCRIPTS["vqa"], "large", DRY_RUN=1, NNODES=2, FORCE_CPU=1)
    assert res.returncode == 2 and "MASTER_ADDR" in res.stderr


# ------------------------------------------------------------------------------- the commands they build
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(TRAIN_SCRIPTS))
def test_dry_run_command(name, size):
    argv, _ = dry_run(TRAIN_SCRIPTS[name], size)
    assert Path(argv[0]).name == "ofa-train"
    assert option(argv, "--arch") == f"ofa_{size}"
    for flag in NORMFORMER:
        assert flag in argv
    for flag in LAYOUT:  # the official layout switches, passed as the official scripts do
        assert flag in argv
    assert option(argv, "--optimizer") == "adam" and option(argv, "--adam-betas") == "(0.9,0.999)"
    assert option(argv, "--adam-eps") == "1e-08" and option(argv, "--weight-decay") == "0.01"
    assert option(argv, "--clip-norm") == "1.0" and option(argv, "--lr-scheduler") == "polynomial_decay"
    assert "--warmup-ratio" not in argv and option(argv, "--warmup-updates") is not None
    assert int(option(argv, "--total-num-update")) >= 1
    assert "--cpu" in argv and "--fp16" not in argv and "--memory-efficient-fp16" not in argv
    assert option(argv, "--num-workers") == "0" and option(argv, "--fixed-validation-seed") == "7"
    assert option(argv, "--restore-file") == f"/nonexistent/ckpt/ofa_{size}.pt" or name == "caption_stage2"
    assert {"--reset-optimizer", "--reset-dataloader", "--reset-meters"} <= set(argv)
    assert option(argv, "--save-dir") == "/nonexistent/save"


@pytest.mark.parametrize("name,size,lr,drop_path", [
    ("refcoco", "large", "3e-5", "0.2"), ("refcoco", "base", "5e-5", "0.1"), ("refcoco", "huge", "3e-5", "0.2"),
    ("snli_ve", "large", "2e-5", "0.2"), ("snli_ve", "tiny", "5e-5", "0.1"),
    ("vqa", "large", "5e-5", "0.2"), ("vqa", "medium", "5e-5", "0.1"),
    ("caption_stage1", "large", "1e-5", "0.1"), ("caption_stage2", "large", "1e-5", "0.0"),
])
def test_per_size_recipe(name, size, lr, drop_path):
    argv, _ = dry_run(TRAIN_SCRIPTS[name], size)
    assert option(argv, "--lr") == lr
    assert option(argv, "--encoder-drop-path-rate") == drop_path == option(argv, "--decoder-drop-path-rate")


def test_task_specific_flags():
    argv, _ = dry_run(TRAIN_SCRIPTS["caption_stage2"], "large")
    assert option(argv, "--criterion") == "scst_reward_criterion" and option(argv, "--scst-beam") == "5"
    assert option(argv, "--restore-file").endswith("runs/caption_stage1/large/checkpoint_best.pt")
    assert option(argv, "--end-learning-rate") == "2e-7" and option(argv, "--selected-cols") == "1,4,2"
    argv, _ = dry_run(TRAIN_SCRIPTS["caption_stage1"], "base")
    assert option(argv, "--drop-worst-after") == "6000" and option(argv, "--max-epoch") == "5"
    argv, _ = dry_run(TRAIN_SCRIPTS["vqa"], "large")
    assert option(argv, "--max-update") == "40000" == option(argv, "--total-num-update")
    assert option(argv, "--warmup-updates") == "1000" and option(argv, "--prompt-type") == "prev_output"
    argv, _ = dry_run(TRAIN_SCRIPTS["snli_ve"], "base")
    assert "--add-caption" in argv and option(argv, "--label-smoothing") == "0.0"
    argv, _ = dry_run(TRAIN_SCRIPTS["refcoco"], "base", DATASET="refcocog")
    assert option(argv, "--max-epoch") == "12" and "refcocog_data/refcocog_train.tsv" in argv[1]
    argv, _ = dry_run(TRAIN_SCRIPTS["image_classify"], "large")
    assert "--imagenet-default-mean-and-std" in argv and option(argv, "--max-update") == "160000"
    argv, _ = dry_run(TRAIN_SCRIPTS["detection"], "base")
    assert option(argv, "--task") == "detection" and option(argv, "--max-objects") == "100"
    assert option(argv, "--class-names") == "/nonexistent/data/coco_detection/detection_train.classes.txt"
    assert option(argv, "--best-checkpoint-metric") == "ap" and option(argv, "--eval-beam") == "1"
    argv, _ = dry_run(TRAIN_SCRIPTS["region_caption"], "large")
    assert option(argv, "--task") == "region_caption" and option(argv, "--lr") == "1e-5"
    assert option(argv, "--encoder-drop-path-rate") == "0.2" and option(argv, "--best-checkpoint-metric") == "cider"
    argv, _ = dry_run(TRAIN_SCRIPTS["image_text_match"], "base")
    assert option(argv, "--task") == "image_text_match" and option(argv, "--max-eval-images") == "1000"
    assert option(argv, "--best-checkpoint-metric") == "i2t_r1" and option(argv, "--patch-image-size") == "480"
    assert "caption_data/caption_stage1_train.tsv" in argv[1] and argv[1].endswith("caption_data/caption_val.tsv")


def test_schedule_replaces_warmup_ratio():
    # 1000 rows, 1 process, batch 4, effective 128 -> update-freq 32; ceil(250 / 32) = 8 updates per epoch
    argv, res = dry_run(TRAIN_SCRIPTS["refcoco"], "base")
    assert option(argv, "--update-freq") == "32" and option(argv, "--batch-size") == "4"
    assert option(argv, "--total-num-update") == "80" and option(argv, "--warmup-updates") == "4"
    # overrides after the size also feed the schedule: 2 epochs of ceil(ceil(1000 / 8) / 4) = 32 updates
    argv, _ = dry_run(TRAIN_SCRIPTS["refcoco"], "base", "--batch-size", "8", "--update-freq", "4", "--max-epoch=2")
    assert option(argv, "--total-num-update") == "64" and option(argv, "--warmup-updates") == "3"
    assert argv[-1] == "--max-epoch=2"  # overrides come last, so they win
    # the effective batch is kept on 4 processes: 128 / (4 x 4) = 8, and rows are split over the ranks
    argv, _ = dry_run(TRAIN_SCRIPTS["refcoco"], "large", GPUS_PER_NODE=4)
    assert option(argv, "--update-freq") == "8"
    assert option(argv, "--total-num-update") == "80"  # ceil(ceil(250 / 4) / 8) = 8 per epoch


def test_launcher_gpus_and_nodes(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: a)'\necho 'GPU 1: Fake (UUID: b)'\n")
    smi.chmod(0o755)
    path = f"{fake}:{os.environ.get('PATH', '')}"
    argv, _ = dry_run(TRAIN_SCRIPTS["refcoco"], "large", FORCE_CPU=0, PATH=path)
    assert Path(argv[0]).name == "torchrun" and "--nproc_per_node=2" in argv and "--nnodes=1" in argv
    assert Path(argv[argv.index("--master_port=29500") + 1]).name == "ofa-train"
    assert "--fp16" in argv and "--cpu" not in argv and option(argv, "--num-workers") == "4"
    argv, _ = dry_run(TRAIN_SCRIPTS["caption_stage2"], "base", FORCE_CPU=0, PATH=path, CUDA_VISIBLE_DEVICES="1")
    assert Path(argv[0]).name == "ofa-train" and "--memory-efficient-fp16" in argv  # one visible GPU
    argv, _ = dry_run(TRAIN_SCRIPTS["vqa"], "large", FORCE_CPU=0, PATH=path, NNODES=4, NODE_RANK=3,
                      MASTER_ADDR="10.1.2.3", MASTER_PORT=1234, GPUS_PER_NODE=8)
    assert argv[1:6] == ["--nnodes=4", "--nproc_per_node=8", "--node_rank=3", "--master_addr=10.1.2.3",
                         "--master_port=1234"]
    assert option(argv, "--update-freq") == "4"  # 512 / (32 x 4)
    argv, _ = dry_run(EVALUATE, str(REPO / "README.md"), str(REPO / "README.md"), "--eval-beam", "3",
                      FORCE_CPU=0, PATH=path)
    assert Path(argv[0]).name == "torchrun" and "--fp16" in argv and option(argv, "--gen-subset") == "README"
    assert argv[-2:] == ["--eval-beam", "3"]


def test_smoke_dry_run_uses_the_demo_benchmark(tmp_path):
    res = run(TRAIN_SCRIPTS["caption_stage2"], "--smoke", DRY_RUN=1, SMOKE_DIR=tmp_path)
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    names = [Path(c[0]).name for c in cmds]
    assert names == ["ofa-synth", "ofa-tokenizer", "ofa-train", "ofa-evaluate"]
    assert cmds[0][1:] == ["generate", str(tmp_path / "demo_data"), "--num-images", "24", "--image-size", "64",
                           "--seed", "0", "--quiet"]
    assert cmds[1][cmds[1].index("--vocab-size") + 1] == "400"
    train = cmds[2]
    assert option(train, "--arch") == "ofa_test" and "--cpu" in train and option(train, "--max-update") == "2"
    assert option(train, "--patch-image-size") == "64" and option(train, "--criterion") == "scst_reward_criterion"
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


# ------------------------------------------------------------------------------------------- end to end
def test_refcoco_smoke_end_to_end(tmp_path):
    """`train_refcoco.sh --smoke` from an unrelated folder: demo data, 2 CPU updates, checkpoint, metrics."""
    smoke = tmp_path / "smoke"
    res = run(TRAIN_SCRIPTS["refcoco"], "--smoke", cwd=tmp_path, timeout=600, SMOKE_DIR=smoke)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    save = smoke / "refcoco"
    assert (save / "checkpoint_best.pt").is_file() and (save / "checkpoint_last.pt").is_file()
    assert (save / "train.log").is_file()
    metrics = json.loads((save / "results" / "test_metrics.json").read_text())
    predictions = json.loads((save / "results" / "test_predict.json").read_text())
    n_test = sum(1 for line in open(smoke / "demo_data" / "refcoco_test.tsv") if line.strip())
    assert 0.0 <= metrics["acc"] <= 1.0 and metrics["count"] == n_test == len(predictions)
    assert all(len(p["box"]) == 4 for p in predictions)

    # the released layout is on in the trained model: NormFormer switches passed, layout by the plugin default
    import torch

    state = torch.load(save / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    model_cfg = state["cfg"]["model"]
    for flag in NORMFORMER + LAYOUT:
        assert model_cfg[flag[2:].replace("-", "_")] is True, flag


def test_official_layout_flags_parse_as_switches():
    import ofa  # noqa: F401
    from fairseq import options

    args = options.parse_args_and_arch(options.get_training_parser(), input_args=[
        "/x", "--task", "refcoco", "--bpe-dir", "/x", "--arch", "ofa_base", *LAYOUT])
    for flag in LAYOUT:
        assert getattr(args, flag[2:].replace("-", "_")) is True, flag
