"""The config of a registered fairseq task for evaluation and inference: the task dataclass's defaults, then
what a checkpoint saved, then what the caller gives (``ofa-evaluate``, ``ofa-predict``, ``inference_model``).

The task is looked up in fairseq's registry by name, so this module knows no task: any task registered
by ``ofa`` or by a ``--user-dir`` plugin works.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict


def build_task_config(task_name: str, saved: Dict[str, Any], cli: Dict[str, Any]):
    """Task dataclass from its defaults, then the checkpoint's saved values, then the command line.

    A checkpoint saved by another task (``saved["_name"]``, e.g. a ``unify`` pretraining checkpoint
    evaluated zero-shot as ``refcoco``) gives no generation settings (``eval_*``: a box is exactly four
    tokens, whatever the pretraining decoded) and no candidate answers (``ans2label_file``); its image,
    tokenizer and vocabulary options still apply.

    Args:
        task_name: a task registered with fairseq.
        saved: the checkpoint's task config (``CheckpointInfo.task``); values holding unresolved OmegaConf
            interpolations (``${...}``) are skipped.
        cli: the caller's values by field name (``None`` values are skipped).

    Returns:
        an instance of the task's config dataclass (``seed`` 1 and ``num_workers`` 0 unless given).
    """
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    dc = TASK_DATACLASS_REGISTRY[task_name]
    if saved.get("_name") not in (None, task_name):
        saved = {k: v for k, v in saved.items() if k != "ans2label_file" and not k.startswith("eval_")}

    def usable(v):
        return v is not None and not (isinstance(v, str) and "${" in v)

    values = {}
    for f in dataclasses.fields(dc):
        if f.name.startswith("_"):
            continue
        for source in (cli, saved):
            if usable(source.get(f.name)):
                values[f.name] = source[f.name]
                break
    values.setdefault("seed", 1)
    values.setdefault("num_workers", 0)
    return dc(**values)
