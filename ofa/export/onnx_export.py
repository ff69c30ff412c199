"""Write an ONNX export of a loaded model: two graphs, their settings and the tokenizer files.

An export folder holds

- ``encoder.onnx`` and ``decoder_step.onnx`` (``ofa.export.graphs``; dynamic batch, source length and cache
  length, a fixed image size: the patch grid and its position terms are part of the graph),
- ``onnx_config.json``: the graphs' input/output names, the model's sizes, the special token ids, the image
  size and normalisation and the task config the checkpoint was saved with,
- ``generation.json``: the task's beam-search settings, the same ``SequenceGenerator`` would use (beam,
  lengths, penalties, n-gram blocking, a token range or the candidate answers of a closed-set task),
- the tokenizer files (``dict.txt`` and ``encoder.json`` / ``vocab.bpe`` or ``spm.model``).

``ofa_runtime`` runs it with onnxruntime and numpy alone. The folder is written beside its final place and
renamed into it, so a failed export never leaves a half-written folder where a good one was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, List, Optional

import torch

from ofa.data_utils.transforms import MEAN, STD
from ofa.export.graphs import (DecoderStepGraph, EncoderGraph, cache_names, example_inputs, restore_attention,
                               use_math_attention)
from ofa.io_utils import _umask

ONNX_CONFIG = "onnx_config.json"
GENERATION = "generation.json"
ANSWERS = "answers.txt"  # a closed-set task's candidate answers, one per line (the task config points here)
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
FORMAT = "ofa-onnx"
TOKENIZER_FILES = ("encoder.json", "vocab.bpe", "dict.txt", "spm.model")
DEFAULT_OPSET = 17


def generator_settings(generator) -> Dict[str, Any]:
    """The JSON form of a ``SequenceGenerator``'s settings (what ``ofa_runtime.BeamSearch`` takes).

    Raises:
        ValueError: sampling, image-code generation or a constraint other than a token range or an answer trie
            (detection's grammar), which the export does not cover.
    """
    from ofa.generate.constraints import TokenRange, TrieConstraint
    from ofa.generate.search import BeamSearch

    if not isinstance(generator.search, BeamSearch):
        raise ValueError("the ONNX runtime decodes by beam search; sampling is not exported")
    if generator.gen_code:
        raise ValueError("image-code generation (image_gen) is not exported to ONNX")
    out: Dict[str, Any] = {
        "beam_size": generator.beam_size, "max_len_a": generator.max_len_a, "max_len_b": generator.max_len_b,
        "min_len": generator.min_len, "normalize_scores": generator.normalize_scores,
        "len_penalty": generator.len_penalty, "unk_penalty": generator.unk_penalty,
        "temperature": generator.temperature,
        "no_repeat_ngram_size": generator.ngram_blocker.n if generator.ngram_blocker is not None else 0,
        "zero_shot": generator.zero_shot, "constraint_range": None, "constraint_trie": None,
    }
    for c in generator.constraints:
        if isinstance(c, TokenRange):
            out["constraint_range"] = [c.start, c.end]
        elif isinstance(c, TrieConstraint):
            out["constraint_trie"] = trie_sequences(c.trie)
        else:  # e.g. detection's object grammar: the runtime could not reproduce the decoding
            raise ValueError(f"the {type(c).__name__} decoding constraint is not exported to ONNX")
    return out


def trie_sequences(trie) -> list:
    """Every root-to-leaf token path of an ``ofa.generate.Trie`` (the sequences it was built from)."""
    out, todo = [], [(0, [])]
    while todo:
        node, path = todo.pop()
        children = trie._children[node]
        if not children:
            out.append(path)
        for tok, child in children.items():
            todo.append((child, path + [tok]))
    return sorted(out)


def _export_graph(module, args, path: str, input_names, output_names, dynamic_axes, opset: int) -> None:
    with warnings.catch_warnings():  # the tracer's notes on Python values it keeps as constants
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)


@torch.no_grad()
def export_onnx(model, out_dir: str, tokenizer_dir: str, image_size: int, task_cfg: Optional[Dict[str, Any]] = None,
                generation: Optional[Dict[str, Any]] = None, dictionary=None, answers: Optional[List[str]] = None,
                opset: int = DEFAULT_OPSET) -> str:
    """Export ``model`` (an ``OFAModel``, float32 on the CPU afterwards) to ``out_dir``.

    Args:
        model: the model; its adapters must already be merged (``ofa.load_model`` does).
        out_dir: the export folder (replaced when it exists).
        tokenizer_dir: the folder of the model's tokenizer files, copied into the export.
        image_size: the square input size the encoder graph takes (the task's ``patch_image_size``).
        task_cfg: the task config to record (``ofa-predict --onnx`` rebuilds the task's prompts from it).
        generation: ``generator_settings`` of the task's generator.
        dictionary: the fairseq dictionary (for the special ids); default the model's.
        answers: a closed-set task's candidate answers, written to ``answers.txt``.

    Returns:
        ``out_dir``.
    """
    model = model.float().cpu().eval()
    cfg = model.cfg
    dictionary = dictionary or model.decoder.dictionary
    n_layers = cfg.decoder_layers
    cross, past, present = cache_names(n_layers)
    enc_args, dec_args = example_inputs(model, image_size=image_size)

    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", dir=parent)
    saved_impl = use_math_attention(model)
    try:
        batch = {0: "batch"}
        _export_graph(
            EncoderGraph(model), enc_args, os.path.join(tmp, ENCODER_FILE),
            ["src_tokens", "patch_images", "patch_masks"], ["encoder_out", "encoder_padding_mask", "cross_pos_k", *cross],
            {"src_tokens": {0: "batch", 1: "src_len"}, "patch_images": batch, "patch_masks": batch,
             "encoder_out": {0: "batch", 1: "enc_len"}, "encoder_padding_mask": {0: "batch", 1: "enc_len"},
             "cross_pos_k": {0: "batch", 3: "enc_len"}, **{n: {0: "batch", 2: "enc_len"} for n in cross}},
            opset)
        _export_graph(
            DecoderStepGraph(model), dec_args, os.path.join(tmp, DECODER_FILE),
            ["tokens", "encoder_padding_mask", "cross_pos_k", *cross, *past], ["logits", *present],
            {"tokens": {0: "rows"}, "encoder_padding_mask": {0: "rows", 1: "enc_len"},
             "cross_pos_k": {0: "rows", 3: "enc_len"}, **{n: {0: "rows", 2: "enc_len"} for n in cross},
             **{n: {0: "rows", 2: "past_len"} for n in past}, "logits": {0: "rows"},
             **{n: {0: "rows", 2: "cur_len"} for n in present}},
            opset)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        restore_attention(saved_impl)

    config = {
        "format": FORMAT, "version": 1,
        "encoder": ENCODER_FILE, "decoder_step": DECODER_FILE,
        "encoder_inputs": ["src_tokens", "patch_images", "patch_masks"],
        "encoder_outputs": ["encoder_out", "encoder_padding_mask", "cross_pos_k", *cross],
        "decoder_inputs": ["tokens", "encoder_padding_mask", "cross_pos_k", *cross, *past],
        "decoder_outputs": ["logits", *present],
        "decoder_layers": n_layers, "decoder_attention_heads": cfg.decoder_attention_heads,
        "head_dim": cfg.decoder_embed_dim // cfg.decoder_attention_heads, "embed_dim": cfg.decoder_embed_dim,
        "vocab_size": len(dictionary),
        "code_dict_size": sum(1 for s in dictionary.symbols if s.startswith("<code_")),
        "num_bins": sum(1 for s in dictionary.symbols if s.startswith("<bin_")), "bos": dictionary.bos(), "pad": dictionary.pad(), "eos": dictionary.eos(),
        "unk": dictionary.unk(), "image_size": int(image_size), "image_mean": list(MEAN),
        "image_std": list(STD), "max_target_positions": cfg.max_target_positions,
        "model": {k: v for k, v in vars(cfg).items() if not k.startswith("_")},
        "task": dict(task_cfg or {}),
    }
    try:
        with open(os.path.join(tmp, ONNX_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, sort_keys=True, default=str)
        if generation is not None:
            with open(os.path.join(tmp, GENERATION), "w", encoding="utf-8") as f:
                json.dump(generation, f, indent=1)
        if answers is not None:
            with open(os.path.join(tmp, ANSWERS), "w", encoding="utf-8") as f:
                f.write("".join(f"{a}\n" for a in answers))
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(tmp, name))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _publish(tmp: str, out_dir: str) -> None:
    """Give the finished folder the user's umask and rename it into ``out_dir`` (an old export there is
    removed only once the new one is complete)."""
    mask = _umask()
    os.chmod(tmp, 0o777 & ~mask)
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o666 & ~mask)
    if os.path.isdir(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.old.",
                               dir=os.path.dirname(os.path.abspath(out_dir)) or ".")
        os.rmdir(old)
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)
