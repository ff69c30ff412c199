"""The config of a registered fairseq task for evaluation and inference: the task dataclass's defaults, then
what a checkpoint saved, then what the caller gives (``ofa-evaluate``, ``ofa-predict``, ``inference_model``).

The task is looked up in fairseq's registry by name, so this module knows no task: any task registered
by ``ofa`` or by a ``--user-dir`` plugin works. Every value taken is checked against its type and range
(``ofa.config_checks.task_field_limits``), and with the loaded checkpoint at hand, against what the
checkpoint fixes (``ofa.config_checks.check_against_checkpoint``), before the task is set up.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from ofa.config_checks import (check_against_checkpoint, check_value, ignorable_keys, task_field_limits,
                               unknown_keys, warn_unknown_keys)


def build_task_config(task_name: str, saved: Dict[str, Any], cli: Dict[str, Any], checkpoint: Optional[Any] = None,
                      style: str = "cli"):
    """Task dataclass from its defaults, then the checkpoint's saved values, then the command line.

    A checkpoint saved by another task (``saved["_name"]``, e.g. a ``unify`` pretraining checkpoint
    evaluated zero-shot as ``refcoco``) gives no generation settings (``eval_*``: a box is exactly four
    tokens, whatever the pretraining decoded) and no candidate answers (``ans2label_file``); its image,
    tokenizer and vocabulary options still apply.

    Args:
        task_name: a task registered with fairseq.
        saved: the checkpoint's task config (``CheckpointInfo.task``); values holding unresolved OmegaConf
            interpolations (``${...}``) are skipped. When it was saved by this same task, keys the task does
            not know (and that are not on ``ofa.config_checks.ignorable_keys``) are warned about in one line.
        cli: the caller's values by field name (``None`` values are skipped).
        checkpoint: the loaded checkpoint's ``CheckpointInfo``; when given, options that contradict it
            (``num_bins``, ``code_dict_size``, the tokenizer's size, ``patch_image_size`` vs the backbone's
            stride and the image positions, text lengths vs the position tables) are errors.
        style: how the caller's values are named in messages: ``cli`` (``--num-bins 0``) or ``keyword``
            (``num_bins=0``, for Python callers such as ``inference_model``).

    Returns:
        an instance of the task's config dataclass (``seed`` 1 and ``num_workers`` 0 unless given).

    Raises:
        ofa.errors.ConfigError: a value of the wrong type or out of range, or one that contradicts the
            checkpoint (one line naming the option or the file, the value and the bound).
    """
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    dc = TASK_DATACLASS_REGISTRY[task_name]
    where = getattr(checkpoint, "path", None) or "the checkpoint"
    fields = [f.name for f in dataclasses.fields(dc) if not f.name.startswith("_")]
    if saved.get("_name") not in (None, task_name):
        saved = {k: v for k, v in saved.items() if k != "ans2label_file" and not k.startswith("eval_")}
    elif saved.get("_name") == task_name and unknown_keys(saved, fields, ignorable_keys()):
        warn_unknown_keys(saved, fields, scope=f"{task_name} task config", where=where)

    def usable(v):
        return v is not None and not (isinstance(v, str) and "${" in v)

    limits = task_field_limits(dc)
    values, given = {}, set()
    for name in fields:
        if usable(cli.get(name)):
            values[name] = cli[name]
            given.add(name)
            if name in limits:
                check_value(name, values[name], limits[name], scope="task config", style=style)
        elif usable(saved.get(name)):
            values[name] = saved[name]
            if name in limits:
                check_value(name, values[name], limits[name], scope="task config", where=where)
    values.setdefault("seed", 1)
    values.setdefault("num_workers", 0)
    cfg = dc(**values)
    if checkpoint is not None:
        check_against_checkpoint(checkpoint, cfg, given=given, style=style)
    return cfg
