"""Bad inputs and mistakes, one table: each case is what a person types (or calls from Python), the answer
it must get (the one line ``PROG: error: ...`` on stderr with exit status 2 and no traceback, or the line a
run that goes on prints) and a check that nothing was lost (every file that was there is unchanged unless
the case may write it, and no ``.partial`` file is left).

The table covers every item of "no input trusted": checkpoint and export values out of range, options that
contradict the checkpoint, bad bytes, numbers and long text in the data, editor line numbers, ``--bad-rows
skip``, every console script's mistakes, the download cache offline, and the Python API. Detailed tests of
each part live beside their code (``test_config_checks``, ``test_data_fields``, ``test_bad_rows``,
``test_hub``, ``test_inference_batch``); the things a clean run must do (quiet output, TensorBoard curves,
the umask, stale partial files removed) are the tests at the end.

``run_case`` is plain Python so that ``experiments/mistakes_before_after.py`` can run the same table
against an older tree of the project.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import pytest

LONG_URL = "what does http://" + "very-long-host-name." * 40 + "example.com/a/b/c?q=1 show?"
LONG_CJK = "图片中" * 300 + "是什么？"


# ---------------------------------------------------------------------------------------------- the world
def train_args(root: Path, save: str = "ckpt", drop: Tuple[str, ...] = (), **replace) -> List[str]:
    """An ``ofa-train`` command line for a 2-update caption run; ``drop`` removes options (with their value),
    ``replace`` changes values (``task="x"``, ``data="..."``) or adds options."""
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


def _lines(path: Path) -> List[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: List[Union[str, bytes]]) -> str:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines))
    return str(path)


def _with_field(line: str, column: int, value: str) -> str:
    cols = line.split("\t")
    cols[column] = value
    return "\t".join(cols)


def _rewrite_checkpoint(src: str, dst: Path, model: Optional[Dict[str, Any]] = None,
                        task: Optional[Dict[str, Any]] = None) -> str:
    """A copy of checkpoint ``src`` with model / task config entries changed or added."""
    import argparse

    import torch
    from omegaconf import OmegaConf, open_dict

    from ofa.checkpoint import safe_load

    obj = safe_load(src)
    for part, values in (("model", model or {}), ("task", task or {})):
        cfg = obj["cfg"][part]
        if isinstance(cfg, argparse.Namespace):
            vars(cfg).update(values)
        elif OmegaConf.is_config(cfg):
            with open_dict(cfg):
                cfg.update(values)
        else:
            cfg.update(values)
    torch.save(obj, dst)
    return str(dst)


def build_world(root: Path) -> Path:
    """The embedded benchmark (16 images, 64 px), its SentencePiece tokenizer, a caption checkpoint trained
    for two updates (``ofa_test``) and, under ``bad/``, hand-made bad inputs: files with a non-UTF-8 byte,
    bad boxes, long text and blank lines; checkpoint copies with absurd config values; an export with one
    in its JSON; an image and a file that is not one."""
    from PIL import Image

    from ofa.checkpoint import export_safetensors, load_model
    from ofa.cli.train import train
    from ofa.tokenizer import train_sentencepiece
    from ofa_synth.writer import main as synth_main

    data, bad = root / "data", root / "bad"
    synth_main([str(data), "--num-images", "16", "--image-size", "64", "--seed", "0", "--quiet"])
    train_sentencepiece(str(data / "text_corpus.txt"), str(root / "tok"), vocab_size=400)
    status = train(train_args(root))
    assert status in (0, None), status
    bad.mkdir()

    caption = _lines(data / "caption_train.tsv")[:8]  # two batches of 4: a 2-update run reads every row
    cols = caption[2].split("\t")  # line 3's caption (column 3) starts with a byte that is not UTF-8
    raw = "\t".join(cols[:2]).encode("utf-8") + b"\ta \xff" + "\t".join(cols[2:]).encode("utf-8")
    _write(bad / "caption_bad_byte.tsv", caption[:2] + [raw] + caption[3:])
    _write(bad / "caption_long.tsv", [_with_field(line, 2, LONG_URL if i % 2 else LONG_CJK)
                                      for i, line in enumerate(caption)])
    test = _lines(data / "caption_test.tsv")
    _write(bad / "caption_test_long_ref.tsv", [_with_field(test[0], 2, LONG_URL + "&&" + LONG_CJK)] + test[1:])
    valid = _lines(data / "caption_valid.tsv")
    _write(bad / "caption_test_bad_byte.tsv", [valid[0].encode("utf-8").replace(b"\t", b"\t\xff", 3), valid[1]])

    ref = _lines(data / "refcoco_train.tsv")
    boxes = ["10,10,5,50", "nan,1,20,20", "0,0,100,100"]  # x1 < x0; not finite; outside the 64 px image
    _write(bad / "refcoco_bad_boxes.tsv", [ref[0]] + [_with_field(ref[i + 1], 3, b) for i, b in enumerate(boxes)])
    _write(bad / "refcoco_blank_lines.tsv", [ref[0], "", ref[1], "", _with_field(ref[2], 3, "1,2,3")])
    _write(bad / "refcoco_bad_byte.tsv", [ref[0].encode("utf-8").replace(b"\tthe", b"\tthe \xfe", 1),
                                          ref[1], _with_field(ref[2], 3, "9,9,1,1")])

    src = ckpt(root)
    _rewrite_checkpoint(src, bad / "layers_1e9.pt", model={"encoder_layers": 10 ** 9})
    _rewrite_checkpoint(src, bad / "ffn_1e9.pt", model={"decoder_ffn_embed_dim": 10 ** 9})
    _rewrite_checkpoint(src, bad / "negative_layers.pt", model={"decoder_layers": -1})
    _rewrite_checkpoint(src, bad / "bins_1e9.pt", task={"num_bins": 10 ** 9})
    _rewrite_checkpoint(src, bad / "unknown_key.pt", model={"encoder_flash_mode": True})
    model, _, info = load_model(src)
    export = export_safetensors(model, str(root / "tok"), str(bad / "export"), task_cfg=dict(info.task))
    config = json.loads(Path(export, "config.json").read_text())
    config["model"]["encoder_layers"] = 10 ** 9
    Path(export, "config.json").write_text(json.dumps(config))

    image = base64.b64decode(test[0].split("\t")[-1])
    (bad / "image.png").write_bytes(image)
    assert Image.open(bad / "image.png").size == (64, 64)
    (bad / "not_an_image.png").write_text("this is text, not a PNG\n")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("mistakes"))


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    """One mistake. ``prog`` is a console script (called as ``main(argv)``) or ``python`` (``call`` is a
    function of the world run in-process: a ``UserError`` or missing file it raises is "status 2" with its
    message as the line, a result is "status 0" with its ``repr`` as the output, warnings go to stderr).

    ``message``: with status 2, text of the one error line; otherwise text each of which must appear in
    what the command printed (stdout and stderr)."""
    id: str
    area: str  # the item it answers
    prog: str
    call: Callable[[Path], Any]  # argv (console) or the Python call
    status: int
    message: Union[str, Tuple[str, ...]]
    writes: Tuple[str, ...] = ()  # paths (relative to the world) the case may create or change
    env: Dict[str, str] = field(default_factory=dict)


def _eval(root: Path, *extra: str, data: str = "data/caption_test.tsv", path: Optional[str] = None) -> List[str]:
    return [str(root / data), "--path", path or ckpt(root), "--results-path", str(root / "results"), *extra]


def _predict(root: Path, *extra: str, path: Optional[str] = None, image: str = "bad/image.png") -> List[str]:
    return ["--checkpoint", path or ckpt(root), "--image", str(root / image), *extra]


def _api(fn: Callable[..., Any]) -> Callable[[Path], Any]:
    """A Python call on the world's checkpoint and image: ``fn(inference_model, checkpoint, image)``."""
    def call(root: Path):
        from ofa import inference_model

        return fn(inference_model, ckpt(root), str(root / "bad" / "image.png"))
    return call


def _bad(name: str) -> Callable[[Path], str]:
    return lambda r: str(r / "bad" / name)


OFFLINE = {"OFA_OFFLINE": "1"}
RESULTS = ("results/",)

CASES = [
    # ---- checkpoints and exports are input too
    Case("evaluate: encoder_layers 10^9 in a checkpoint", "config values", "ofa-evaluate",
         lambda r: _eval(r, path=_bad("layers_1e9.pt")(r)), 2, "'encoder_layers' = 1000000000 in"),
    Case("evaluate: an FFN of 10^9 in a checkpoint", "config values", "ofa-evaluate",
         lambda r: _eval(r, path=_bad("ffn_1e9.pt")(r)), 2, "'decoder_ffn_embed_dim' = 1000000000 in"),
    Case("evaluate: a negative layer count", "config values", "ofa-evaluate",
         lambda r: _eval(r, path=_bad("negative_layers.pt")(r)), 2, "'decoder_layers' = -1 in"),
    Case("evaluate: num_bins 10^9 in a checkpoint", "config values", "ofa-evaluate",
         lambda r: _eval(r, path=_bad("bins_1e9.pt")(r)), 2, "'num_bins' = 1000000000 in"),
    Case("predict: encoder_layers 10^9 in an export's JSON", "config values", "ofa-predict",
         lambda r: _predict(r, path=_bad("export")(r)), 2, "'encoder_layers' = 1000000000 in"),
    Case("evaluate: a model key this version does not know", "config values", "ofa-evaluate",
         lambda r: _eval(r, path=_bad("unknown_key.pt")(r)), 0,
         "keys this version does not know, ignored: encoder_flash_mode", writes=RESULTS),
    # ---- options that contradict the checkpoint
    Case("evaluate: --num-bins 500 on a 1000-bin checkpoint", "contradictions", "ofa-evaluate",
         lambda r: _eval(r, "--num-bins", "500"), 2, "--num-bins 500 contradicts the checkpoint's num_bins 1000"),
    Case("evaluate: --bpe-dir that does not exist", "contradictions", "ofa-evaluate",
         lambda r: _eval(r, "--bpe-dir", str(r / "no_tok")), 2, "no_tok"),
    Case("evaluate: an image size the backbone's stride does not divide", "contradictions", "ofa-evaluate",
         lambda r: _eval(r, "--patch-image-size", "60"), 2, "--patch-image-size 60 is not a multiple of the image "
                                                           "backbone's stride"),
    Case("evaluate: --max-src-length beyond the position table", "contradictions", "ofa-evaluate",
         lambda r: _eval(r, "--max-src-length", "5000"), 2, "--max-src-length 5000 contradicts the checkpoint's "
                                                          "max_source_positions"),
    Case("predict: a checkpoint finetuned for caption asked for VQA warns", "contradictions", "ofa-predict",
         lambda r: _predict(r, "--task", "vqa", "--text", "what is it?"), 0,
         "was finetuned for 'caption', not 'vqa_gen'"),
    Case("predict: --bpe-dir that does not exist", "contradictions", "ofa-predict",
         lambda r: _predict(r, "--bpe-dir", str(r / "no_tok")), 2, "no_tok"),
    Case("train: an image size the backbone's stride does not divide", "contradictions", "ofa-train",
         lambda r: train_args(r, "t5", patch_image_size="60"), 2, "--patch-image-size 60 is not a multiple of the "
                                                                  "image backbone's stride"),
    # ---- data: encoding, numbers, long text, line numbers, --bad-rows skip
    Case("validate: a non-UTF-8 byte is named and reading goes on", "data encoding", "ofa-data",
         lambda r: ["validate", _bad("refcoco_bad_byte.tsv")(r), "--task", "refcoco"], 1,
         ("refcoco_bad_byte.tsv, line 1, field 'text'", "not UTF-8", "refcoco_bad_byte.tsv, line 3, field")),
    Case("train: a non-UTF-8 byte names file, line and field", "data encoding", "ofa-train",
         lambda r: train_args(r, "t6", data=f"{_bad('caption_bad_byte.tsv')(r)},{r}/data/caption_valid.tsv"),
         2, "caption_bad_byte.tsv, line 3, field 'caption': not UTF-8 text"),
    Case("train: --bad-rows skip goes past the bad byte and counts it once", "bad rows", "ofa-train",
         lambda r: train_args(r, "t7", data=f"{_bad('caption_bad_byte.tsv')(r)},{r}/data/caption_valid.tsv",
                              bad_rows="skip"), 0, "skipped 1 bad row", writes=("t7/",)),
    Case("evaluate: --bad-rows skip covers the caption CIDEr pass", "bad rows", "ofa-evaluate",
         lambda r: _eval(r, "--bad-rows", "skip", data="bad/caption_test_bad_byte.tsv"), 0,
         ('"count": 1', '"skipped_rows": 1'), writes=RESULTS),
    Case("validate: boxes unordered, not finite, outside the image", "data numbers", "ofa-data",
         lambda r: ["validate", _bad("refcoco_bad_boxes.tsv")(r), "--task", "refcoco"], 1,
         ("line 2, field 'region_coord'", "line 3, field 'region_coord'", "line 4, field 'region_coord'")),
    Case("validate: line numbers count blank lines as an editor does", "line numbers", "ofa-data",
         lambda r: ["validate", _bad("refcoco_blank_lines.tsv")(r), "--task", "refcoco"], 1,
         "refcoco_blank_lines.tsv, line 5, field 'region_coord'"),
    Case("train: long URL and CJK captions are cut to fit", "long text", "ofa-train",
         lambda r: train_args(r, "t8", data=f"{_bad('caption_long.tsv')(r)},{r}/data/caption_valid.tsv"),
         0, "done training", writes=("t8/",)),
    Case("evaluate: a long reference caption", "long text", "ofa-evaluate",
         lambda r: _eval(r, data="bad/caption_test_long_ref.tsv"), 0, "cider", writes=RESULTS),
    Case("predict: a long URL question", "long text", "ofa-predict",
         lambda r: _predict(r, "--task", "vqa", "--text", LONG_URL, "--json"), 0, '"logprob"'),
    # ---- ofa-train
    Case("train: task name typo", "commands", "ofa-train", lambda r: train_args(r, task="captoin"),
         2, "--task: unknown task 'captoin'; did you mean caption"),
    Case("train: data file missing", "commands", "ofa-train",
         lambda r: train_args(r, "t1", data=f"{r}/nope.tsv,{r}/nope.tsv"), 2, "nope.tsv"),
    Case("train: no --bpe-dir", "commands", "ofa-train", lambda r: train_args(r, "t2", drop=("--bpe-dir",)),
         2, "--bpe-dir is required"),
    Case("train: --bpe-dir that does not exist", "commands", "ofa-train",
         lambda r: train_args(r, "t3", bpe_dir=f"{r}/no_tok"), 2, "no_tok"),
    Case("train: no batch size", "commands", "ofa-train", lambda r: train_args(r, "t4", drop=("--batch-size",)),
         2, "no batch size: give --batch-size N"),
    Case("train: a finished run again is a no-op", "commands", "ofa-train", lambda r: train_args(r),
         0, "nothing to do"),
    Case("train: detection with a class list that does not exist", "commands", "ofa-train",
         lambda r: train_args(r, "det1", task="detection", data=f"{r}/data/detection_train.tsv,{r}/data/detection_valid.tsv",
                              class_names=f"{r}/nope_classes.txt"), 2, "class names file not found: "),
    Case("train: detection with --max-objects 0", "commands", "ofa-train",
         lambda r: train_args(r, "det2", task="detection", data=f"{r}/data/detection_train.tsv,{r}/data/detection_valid.tsv",
                              max_objects="0"), 2, "--max-objects must be at least 1, got 0"),
    Case("train: image_text_match with --max-eval-images -1", "commands", "ofa-train",
         lambda r: train_args(r, "t9", task="image_text_match", max_eval_images="-1"), 2,
         "--max-eval-images must be >= 0 (0: every row), got -1"),
    # ---- ofa-evaluate
    Case("evaluate: --help with no checkpoint", "commands", "ofa-evaluate", lambda r: ["--help"], 0,
         "usage: ofa-evaluate"),
    Case("evaluate: no --path", "commands", "ofa-evaluate", lambda r: [str(r / "data" / "caption_test.tsv")],
         2, "the following arguments are required: --path"),
    Case("evaluate: checkpoint missing", "commands", "ofa-evaluate",
         lambda r: [str(r / "data" / "caption_test.tsv"), "--path", str(r / "nope.pt")], 2, "nope.pt"),
    Case("evaluate: a refcoco TSV for a caption checkpoint", "commands", "ofa-evaluate",
         lambda r: _eval(r, data="data/refcoco_test.tsv"), 2,
         "refcoco_test.tsv looks like a refcoco TSV (5 columns); the checkpoint is caption"),
    Case("evaluate: a VQA TSV for a caption checkpoint", "commands", "ofa-evaluate",
         lambda r: _eval(r, data="data/vqa_test.tsv"), 2, "looks like a vqa TSV (6 columns); the checkpoint is caption"),
    Case("evaluate: task name typo", "commands", "ofa-evaluate", lambda r: _eval(r, "--task", "refcoc"),
         2, "unknown task 'refcoc'; did you mean refcoco"),
    Case("evaluate: data file missing", "commands", "ofa-evaluate", lambda r: _eval(r, data="data/nope_test.tsv"),
         2, "data file not found"),
    Case("evaluate: fairseq-generate's --beam / --lenpen / --max-len-b", "commands", "ofa-evaluate",
         lambda r: _eval(r, "--beam", "2", "--lenpen", "0.5", "--max-len-b", "6"), 0, "cider", writes=RESULTS),
    Case("evaluate: --nbest above the beam", "commands", "ofa-evaluate", lambda r: _eval(r, "--beam", "2", "--nbest", "3"),
         2, "--nbest 3 is more than the beam size 2"),
    Case("evaluate: --batch-size 0", "commands", "ofa-evaluate", lambda r: _eval(r, "--batch-size", "0"),
         2, "--batch-size must be at least 1"),
    Case("evaluate: a training-only option", "commands", "ofa-evaluate", lambda r: _eval(r, "--shuffle"),
         2, "unrecognized arguments: --shuffle"),
    # ---- ofa-predict
    Case("predict: image file missing", "commands", "ofa-predict", lambda r: _predict(r, image="bad/nope.png"),
         2, "nope.png"),
    Case("predict: a file that is not an image", "commands", "ofa-predict",
         lambda r: _predict(r, image="bad/not_an_image.png"), 2, "not_an_image.png"),
    Case("predict: task name typo", "commands", "ofa-predict", lambda r: _predict(r, "--task", "captoin"),
         2, "did you mean caption"),
    Case("predict: --batch-size 0", "commands", "ofa-predict", lambda r: _predict(r, "--batch-size", "0"),
         2, "--batch-size: expected a positive integer, got 0"),
    Case("predict: an unknown --set key", "commands", "ofa-predict", lambda r: _predict(r, "--set", "beam_szie=3"),
         2, "beam_size"),
    Case("predict: checkpoint missing", "commands", "ofa-predict", lambda r: _predict(r, path=str(r / "nope.pt")),
         2, "nope.pt"),
    Case("predict: --onnx names a folder that is not an export", "commands", "ofa-predict",
         lambda r: ["--onnx", str(r / "bad"), "--image", str(r / "bad/image.png")], 2, "onnx_config.json"),
    # ---- ofa-export
    Case("export: checkpoint missing", "commands", "ofa-export", lambda r: ["onnx", str(r / "nope.pt"), str(r / "x")],
         2, "nope.pt"),
    Case("export: format typo", "commands", "ofa-export", lambda r: ["onx", ckpt(r), str(r / "x")], 2, "onx"),
    Case("export: an unknown --set key", "commands", "ofa-export",
         lambda r: ["onnx", ckpt(r), str(r / "x"), "--set", "beam_szie=3"], 2, "beam_size"),
    # ---- the other commands
    Case("data: command typo", "commands", "ofa-data", lambda r: ["validat", _bad("refcoco_bad_boxes.tsv")(r)],
         2, "did you mean validate"),
    Case("data: file missing", "commands", "ofa-data", lambda r: ["validate", str(r / "nope.tsv"), "--task", "refcoco"],
         2, "nope.tsv"),
    Case("data: task name typo", "commands", "ofa-data",
         lambda r: ["validate", _bad("refcoco_bad_boxes.tsv")(r), "--task", "refcocoo"], 2, "did you mean refcoco"),
    Case("data: converter source kind typo", "commands", "ofa-data",
         lambda r: ["convert", "coco_detectoin", "--out", str(r / "det.tsv")], 2, "did you mean coco_detection"),
    Case("data: convert coco_detection, instances file missing", "commands", "ofa-data",
         lambda r: ["convert", "coco_detection", "--out", str(r / "det.tsv"), "--instances",
                    str(r / "no_instances.json"), "--images", str(r / "data")], 2,
         ("no_instances.json", "does not exist")),
    Case("data: vg_regions takes no --join-refs (one phrase per region)", "commands", "ofa-data",
         lambda r: ["convert", "vg_regions", "--out", str(r / "vg.tsv"), "--regions", str(r / "regions.json"),
                    "--images", str(r / "data"), "--join-refs"], 2, "unrecognized arguments: --join-refs"),
    Case("synth: command typo", "commands", "ofa-synth", lambda r: ["generat", str(r / "x")], 2,
         "unknown command 'generat'; did you mean generate"),
    Case("tokenizer: tokenizer folder missing", "commands", "ofa-tokenizer",
         lambda r: ["encode", "--bpe-dir", str(r / "no_tok"), "hello"], 2, "no_tok"),
    Case("tokenizer: corpus missing", "commands", "ofa-tokenizer",
         lambda r: ["train", "--corpus", str(r / "no.txt"), "--out", str(r / "tok2")], 2, "no.txt"),
    Case("vqgan: checkpoint missing", "commands", "ofa-vqgan", lambda r: ["info", "--model", str(r / "no_vq")],
         2, "no_vq"),
    # ---- published checkpoints and the download cache
    Case("checkpoints: unknown published name", "hub", "ofa-checkpoints", lambda r: ["download", "ofa_bse"],
         2, "did you mean"),
    Case("predict: offline, a URL not in the cache", "hub", "ofa-predict",
         lambda r: _predict(r, path="https://example.invalid/ofa/checkpoint.pt"), 2,
         ("OFA_OFFLINE", "place a manually fetched copy at"), env=dict(OFFLINE)),
    Case("checkpoints: offline, a published name not in the cache", "hub", "ofa-checkpoints",
         lambda r: ["download", "ofa-base_3rdparty-finetuned_caption"], 2, ("OFA_OFFLINE", "place a manually fetched copy at"), env=dict(OFFLINE)),
    # ---- the Python API
    Case("api: a list of images gives one result each, with logprob and prob", "python api", "python",
         _api(lambda run, c, img: sorted(k for r in run(c, [img, img, img], batch_size=2) for k in r
                                         if k in ("logprob", "prob"))), 0, "'logprob', 'logprob', 'logprob'"),
    Case("api: inference_model is in ofa.__all__", "python api", "python",
         lambda r: "inference_model" in __import__("ofa").__all__, 0, "True"),
    Case("api: batch_size 0", "python api", "python", _api(lambda run, c, img: run(c, [img], batch_size=0)),
         2, "batch_size"),
    Case("api: a misspelt generation keyword", "python api", "python",
         _api(lambda run, c, img: run(c, img, beam_szie=3)), 2, "beam_size"),
    Case("api: num_bins=500 on a 1000-bin checkpoint", "python api", "python",
         _api(lambda run, c, img: run(c, img, num_bins=500)), 2,
         "num_bins=500 contradicts the checkpoint's num_bins 1000"),
    Case("api: fewer texts than images", "python api", "python",
         _api(lambda run, c, img: run(c, [img, img], task="vqa", text=["a?", "b?", "c?"])), 2, "3"),
    Case("api: a caption checkpoint asked for grounding warns", "python api", "python",
         _api(lambda run, c, img: run(c, img, task="refcoco", text="the star")["box"] is not None), 0,
         "was finetuned for 'caption', not 'refcoco'"),
]


# ---------------------------------------------------------------------------------------------- the runner
@dataclass
class Outcome:
    status: int
    out: str
    err: str

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err

    @property
    def last_line(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


def _mains() -> Dict[str, Callable]:
    from ofa.cli.evaluate import main as evaluate
    from ofa.cli.predict import main as predict
    from ofa.cli.train import main as train
    from ofa.data_utils.cli import main as data
    from ofa.hub import main as checkpoints
    from ofa.tokenizer import main as tokenizer
    from ofa.vqgan.cli import main as vqgan
    from ofa_synth.cli import main as synth

    mains = {"ofa-train": train, "ofa-evaluate": evaluate, "ofa-predict": predict, "ofa-data": data,
             "ofa-checkpoints": checkpoints, "ofa-tokenizer": tokenizer, "ofa-vqgan": vqgan, "ofa-synth": synth}
    try:
        from ofa.cli.export import main as export
    except ImportError:  # an older tree
        return mains
    return {**mains, "ofa-export": export}


def _user_errors() -> tuple:
    try:
        from ofa.console import USER_MISTAKES
        from ofa.errors import UserError
    except ImportError:  # an older tree
        return ()
    return (UserError,) + USER_MISTAKES


def run_case(case: Case, root: Path) -> Outcome:
    """Run one case in this process; stdout and stderr are captured here (``sys.stdout`` / ``sys.stderr``
    swapped, so logging handlers made during the call write into them)."""
    import logging

    out, err = io.StringIO(), io.StringIO()
    old_env = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    root_handlers = list(logging.getLogger().handlers)
    for handler in root_handlers:  # a handler made by an earlier case writes to that case's stream
        logging.getLogger().removeHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", ResourceWarning)  # the collector's timing, not the case's
            warnings.showwarning = lambda message, category, *a, **k: err.write(f"{category.__name__}: {message}\n")
            try:
                if case.prog == "python":
                    value = case.call(root)
                    status = 0
                    print(repr(value))
                else:
                    status = _mains()[case.prog](case.call(root))
                    status = 0 if status is None else status
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except _user_errors() as e:  # the Python API's "one line"
                status = 2
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
            except Exception:  # noqa: BLE001 - a bug, as the person sees it
                status = 1
                traceback.print_exc(file=sys.stderr)
    finally:
        for handler in list(logging.getLogger().handlers):
            if handler not in root_handlers:
                logging.getLogger().removeHandler(handler)
        for handler in root_handlers:
            logging.getLogger().addHandler(handler)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(status, out.getvalue(), err.getvalue())


def _snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def lost_files(before: Dict[str, Tuple[int, int]], root: Path, case: Case) -> List[str]:
    """Files that were there and changed or went away (outside what the case may write), and partial files."""
    after = _snapshot(root)
    changed = [p for p, s in before.items() if after.get(p) != s and not p.startswith(case.writes or ("\0",))]
    return changed + [p for p in after if p.endswith(".partial")]


def verdict(case: Case, outcome: Outcome) -> Optional[str]:
    """What is wrong with an outcome (``None`` when it is what the case expects)."""
    wanted = (case.message,) if isinstance(case.message, str) else case.message
    if outcome.status != case.status:
        return f"status {outcome.status}, not {case.status}"
    if outcome.traceback:
        return "a traceback"
    if case.status == 2:
        prefix = f"{case.prog}: error: " if case.prog != "python" else ""
        line = outcome.last_line
        if not line.startswith(prefix):
            return f"last line {line!r} is not '{prefix}...'"
        missing = [m for m in wanted if m not in line]
    else:
        missing = [m for m in wanted if m not in outcome.out + outcome.err]
    return f"missing {missing}" if missing else None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_is_one_line_and_loses_nothing(case, world, cache, monkeypatch):
    monkeypatch.setenv("OFA_CACHE", str(cache))  # never the user's download cache
    monkeypatch.delenv("OFA_OFFLINE", raising=False)
    before = _snapshot(world)
    outcome = run_case(case, world)
    wrong = verdict(case, outcome)
    assert wrong is None, f"{wrong}\n--- stdout\n{outcome.out[-2000:]}\n--- stderr\n{outcome.err[-3000:]}"
    lost = lost_files(before, world, case)
    assert not lost, f"{case.id} changed or removed {lost}"


def test_every_console_script_and_area_has_cases():
    import importlib.metadata

    scripts = {e.name for e in importlib.metadata.entry_points(group="console_scripts")
               if e.value.startswith(("ofa.", "ofa_synth."))}
    assert scripts <= {c.prog for c in CASES}, scripts - {c.prog for c in CASES}
    assert {c.area for c in CASES} == {"config values", "contradictions", "data encoding", "data numbers",
                                       "long text", "line numbers", "bad rows", "commands", "hub", "python api"}


# ---------------------------------------------------------------------------------------------- clean runs
def test_import_ofa_leaves_the_root_logger_alone_and_prints_nothing():
    code = ("import logging, warnings; warnings.simplefilter('default'); root = logging.getLogger(); "
            "before = (root.level, list(root.handlers)); import ofa; "
            "assert (root.level, list(root.handlers)) == before, (root.level, root.handlers); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert out.stderr == "", out.stderr[-2000:]


def test_training_is_quiet_writes_tensorboard_curves_and_keeps_the_umask(world, tmp_path):
    """One run of the console entry in its own interpreter (as a person starts it, with Python's default
    warning filters): none of the stack's noise on stderr, TensorBoard event files for the training and
    validation curves, and the checkpoints' permissions from the umask (027 here)."""
    save = tmp_path / "ckpt"
    code = "import os, sys; os.umask(0o027); from ofa.cli.train import main; sys.exit(main(sys.argv[1:]))"
    argv = train_args(world, str(save), tensorboard_logdir=str(tmp_path / "tb"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "OFA_VERBOSE")}
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600, env=env)
    status, err = run.returncode, run.stderr
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
