"""Predictions from an ONNX export (``ofa-predict --onnx DIR``): the task's own preprocessing and
postprocessing, the beam search of ``ofa_runtime`` on onnxruntime in between.

The task is rebuilt from the config the export recorded (its prompts, image size, tokenizer: the export's
own files). Generating tasks (caption, grounding) run their predictor unchanged with ``OnnxGenerator`` in
place of the PyTorch beam search. Closed-set tasks (VQA, entailment, classification) decode by beam search
constrained to their answer trie (the official ``beamsearch`` evaluation) instead of scoring every
candidate: the result's ``logprob`` is the answer's log-probability as a sequence, and ``top`` lists the
answers of the finished hypotheses.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ofa.errors import ConfigError
from ofa.export.onnx_export import ANSWERS, generator_settings


def _hypothesis(h: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    return {"tokens": torch.from_numpy(h["tokens"]), "score": torch.tensor(h["score"]),
            "positional_scores": torch.from_numpy(h["positional_scores"]), "attention": torch.empty(0),
            "alignment": torch.empty(0)}


class OnnxGenerator:
    """``SequenceGenerator.generate``'s contract (``generate(models, sample, prefix_tokens)``, hypotheses as
    tensors) backed by an ``ofa_runtime.BeamSearch``; ``models`` is ignored."""

    def __init__(self, search):
        self.search = search

    def generate(self, models=None, sample=None, prefix_tokens=None, **unused) -> List[List[Dict[str, Any]]]:
        if sample is None and isinstance(models, dict):
            sample = models
        net = sample["net_input"]
        if net.get("patch_images") is None:
            raise ConfigError("the ONNX export takes an image with every input (text-only tasks are not exported)")
        prefix = None if prefix_tokens is None else prefix_tokens.cpu().numpy()
        masks = net.get("patch_masks")
        hyps = self.search.generate(net["src_tokens"].cpu().numpy(), net["patch_images"].float().cpu().numpy(), prefix,
                                    None if masks is None else masks.cpu().numpy().astype(bool))
        return [[_hypothesis(h) for h in sample_hyps] for sample_hyps in hyps]


class OnnxPredictor:
    """An export folder ready to predict, like ``ofa.inference.load(...)`` for a checkpoint.

    Args:
        export_dir: the folder ``ofa-export onnx`` wrote.
        threads: onnxruntime's intra-op threads (default its own choice).
    """

    def __init__(self, export_dir: str, threads: Optional[int] = None):
        from ofa_runtime import ExportError, OnnxModel

        if not os.path.isdir(export_dir):
            raise ConfigError(f"--onnx {export_dir}: no such folder")
        try:
            self.model = OnnxModel(export_dir, threads=threads)
        except ExportError as e:
            raise ConfigError(str(e)) from None
        self.dir = export_dir
        self._tasks: Dict[Any, Any] = {}

    @property
    def own_task(self) -> Optional[str]:
        return self.model.config.get("task", {}).get("_name") or None

    def _task(self, task_name: str, task_over: Dict[str, Any]):
        from fairseq.tasks import TASK_REGISTRY

        from ofa.task_config import build_task_config
        from ofa.tasks.closed_set import ClosedSetTask

        key = (task_name, tuple(sorted((k, repr(v)) for k, v in task_over.items())))
        if key in self._tasks:
            return self._tasks[key]
        saved = dict(self.model.config.get("task", {}), bpe_dir=self.dir)
        if os.path.isfile(os.path.join(self.dir, ANSWERS)):
            saved["ans2label_file"] = os.path.join(self.dir, ANSWERS)
        cli = dict(task_over)
        size = self.model.image_size
        if cli.setdefault("patch_image_size", size) != size:
            raise ConfigError(f"patch_image_size={cli['patch_image_size']}: the export {self.dir} takes "
                              f"{size} x {size} images (export again with that size)")
        if issubclass(TASK_REGISTRY[task_name], ClosedSetTask):
            cli["val_inference_type"] = "beamsearch"
        cfg = build_task_config(task_name, saved, cli, style="keyword")
        cfg.data = None
        task = TASK_REGISTRY[task_name].setup_task(cfg)
        self._tasks[key] = task
        return task

    def predict(self, image=None, text: Union[None, str, Sequence[Optional[str]]] = None, task: Optional[str] = None,
                caption=None, batch_size: int = 8, **overrides):
        """As ``InferenceHandle.predict`` (``ofa.inference``): one result dict per input, a list for a list."""
        from ofa_runtime import BeamSearch

        from ofa.inference import (INFERENCE, _batch, _finish, _groups, _image_bytes, canonical_task, gather_inputs,
                                   split_overrides)

        own = self.own_task
        if task is None and not own:
            raise ConfigError(f"the export {self.dir} does not say which task it is for: pass --task")
        task_name = canonical_task(task or own)
        spec = INFERENCE[task_name]
        if not spec.needs_image:
            raise ConfigError(f"task {task_name!r} generates images; the ONNX export decodes text only")
        batched, inputs = gather_inputs(spec, task_name, image, text, caption)
        task_over, gen_over = split_overrides(task_name, overrides)
        task_obj = self._task(task_name, task_over)
        generator = task_obj.build_generator([None], **gen_over)
        search = BeamSearch(self.model, **generator_settings(generator))
        task_obj.generator = OnnxGenerator(search)

        rows, sizes = [], []
        for img, txt, premise in inputs:
            raw, size = _image_bytes(img)
            rows.append(spec.row(raw, size, txt, premise))
            sizes.append(size)
        results: List[Optional[Dict[str, Any]]] = [None] * len(inputs)
        device = torch.device("cpu")
        for premise_given, idx in _groups(spec, inputs):
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                sample = _batch(spec, task_obj, [rows[i] for i in chunk], premise_given, device, torch.float32)
                if spec.answer_key is not None:
                    predicted = _closed_set(task_obj, sample, spec.answer_key)
                else:
                    predicted = spec.predict(task_name, task_obj, None, sample, [sizes[i] for i in chunk], {})
                for i, r in zip(chunk, predicted):
                    results[i] = _finish(task_name, spec, r, sizes[i], None)
        return results if batched else results[0]


def _closed_set(task, sample, answer_key: str) -> List[Dict[str, Any]]:
    """Trie-constrained beam search of a closed-set task: per sample the best answer, its log-probability
    (the answer's tokens only, not the forced prompt) and the answers of the other finished hypotheses."""
    from ofa.tasks.closed_set import TOP_K  # the answers a one-image prediction lists

    prefix = sample.get("prefix_tokens")
    hyps = task.generator.generate(None, task.net_input_for_generation(sample), prefix_tokens=prefix)
    out = []
    for i, sample_hyps in enumerate(hyps):
        if not sample_hyps:
            raise RuntimeError(f"beam search finished no hypothesis for input {i} "
                               f"(decoder prompt + answer longer than max_len_b?)")
        skip = int(prefix[i].ne(task.dict.pad()).sum()) if prefix is not None else 0
        top = []
        for h in sample_hyps:
            answer = task.decode(h["tokens"][skip:])
            logprob = float(h["positional_scores"][skip:].double().sum())
            if answer not in (a for a, _ in top):
                top.append((answer, logprob))
        top.sort(key=lambda a: a[1], reverse=True)
        best, best_lp = top[0]
        out.append({answer_key: best, "logprob": best_lp, "prob": math.exp(best_lp), "score": math.exp(best_lp),
                    "top": [(a, math.exp(lp)) for a, lp in top[:TOP_K]]})
    return out
