"""Shared setup of the command-line tools: task names, plugin registration, safe unpickling, atomic copies
(``run_cli``, the one-line errors and quiet logging of every command, lives in ``ofa.console``)."""
from __future__ import annotations

import logging
import os
import shutil
from typing import List, Optional

import torch

from ofa.console import one_line, quiet, run_cli  # noqa: F401  (the commands' error and logging conventions)
from ofa.io_utils import atomic_output


def ofa_task_names() -> List[str]:
    """The registered fairseq tasks that are OFA tasks (``ofa.tasks`` and ``--user-dir`` plugins built on
    ``OFATask``)."""
    from fairseq.tasks import TASK_REGISTRY

    from ofa.tasks.ofa_task import OFATask

    return sorted(name for name, cls in TASK_REGISTRY.items() if isinstance(cls, type) and issubclass(cls, OFATask))


def check_task(name: str, option: str = "--task") -> str:
    """``name`` when it is a registered fairseq task, else a ``ConfigError`` suggesting the near OFA tasks."""
    from fairseq.tasks import TASK_REGISTRY

    from ofa.errors import ConfigError, unknown_name

    if name in TASK_REGISTRY:
        return name
    ours = ofa_task_names()
    raise ConfigError(f"{option}: " + unknown_name("task", name, ours, listing="OFA's tasks:"))


def setup() -> None:
    """Register the plugin and let fairseq's loaders read official checkpoints safely.

    fairseq calls ``torch.load`` with the torch >= 2.6 default (``weights_only``); official and
    fairseq-written checkpoints hold ``argparse.Namespace`` configs and numpy scalars, which are
    allowlisted here. Nothing else is: arbitrary pickled objects are still refused. fairseq's training
    loop is patched for empty batches (``ofa.cli.empty_batches``); ``--optimizer adam`` steps through torch's
    fused Adam kernel with fairseq's arithmetic (equal up to float32 rounding; ``--use-old-adam``: fairseq's
    ops over lists of tensors, bit for bit) and gradient clipping takes one norm call (``ofa.cli.fast_step``);
    ``--ddp-backend fully_sharded`` shards with torch's FSDP instead of fairscale's (``ofa.cli.sharded``).
    """
    import ofa  # noqa: F401  (registers models, tasks and criteria)

    logging.getLogger("PIL").setLevel(logging.INFO)  # PIL logs every PNG chunk at DEBUG
    from ofa.checkpoint import SAFE_GLOBALS

    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    _make_checkpoint_copies_atomic()
    _ema_copies_integer_buffers()
    _progress_log_file_once()
    from ofa.cli.empty_batches import install as install_empty_batch_handling
    from ofa.cli.fast_step import install as install_fast_step
    from ofa.cli.sharded import install as install_sharded

    install_empty_batch_handling()
    install_fast_step()
    install_sharded()


def import_user_dir(user_dir: Optional[str]) -> None:
    """Import a ``--user-dir`` plugin (fairseq's ``import_user_module``), so that its tasks (and their
    ``register_inference``) exist before a checkpoint's task name is looked up; nothing when ``None``."""
    if user_dir:
        import argparse

        from fairseq import utils as fairseq_utils

        fairseq_utils.import_user_module(argparse.Namespace(user_dir=user_dir))


def _progress_log_file_once() -> None:
    """fairseq's ``progress_bar()`` attaches a new ``FileHandler`` for ``--log-file`` at every call (every
    epoch and every validation), so epoch N wrote each line N times and leaked a file handle per call;
    here the handler is attached only when that file has none yet."""
    import inspect
    import logging

    from fairseq.logging import progress_bar as pb

    if getattr(pb, "_ofa_log_once", False):
        return
    original = pb.progress_bar
    signature = inspect.signature(original)

    def progress_bar(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        log_file = bound.arguments.get("log_file")
        if log_file is not None:
            path = os.path.abspath(log_file)
            if any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in pb.logger.handlers):
                bound.arguments["log_file"] = None
        return original(*bound.args, **bound.kwargs)

    pb.progress_bar = progress_bar
    pb._ofa_log_once = True


def _ema_copies_integer_buffers() -> None:
    """fairseq's EMA decays every state entry; integer buffers (position buckets, BatchNorm counters)
    cannot be decayed, so they are copied instead (``--store-ema`` would crash on the first update)."""
    import fairseq.trainer as trainer_module
    from fairseq.models.ema import EMA

    if getattr(trainer_module, "_ofa_ema", False):
        return

    def build_ema(model, cfg, device):
        skip = {k for k, v in model.state_dict().items() if not v.is_floating_point()}
        return EMA(model, cfg, device, skip_keys=skip)

    trainer_module.build_ema = build_ema
    trainer_module._ofa_ema = True


def _make_checkpoint_copies_atomic() -> None:
    """fairseq writes ``checkpoint_last.pt`` etc. by copying the first checkpoint; copy via a temp file."""
    from fairseq.file_io import PathManager

    if getattr(PathManager, "_ofa_atomic_copy", False):
        return
    original = PathManager.copy

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if "://" in src_path or "://" in dst_path:
            return original(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        with atomic_output(dst_path) as tmp:
            shutil.copyfile(src_path, tmp)
        return True

    PathManager.copy = staticmethod(copy)
    PathManager._ofa_atomic_copy = True


def configure_distributed(cfg) -> None:
    """Fill the distributed config from torchrun's environment, including CPU-only (gloo) runs.

    fairseq's own inference divides by ``torch.cuda.device_count()`` and assumes NCCL; here the
    device is ``LOCAL_RANK`` on GPUs, and CPU runs use gloo with fairseq's legacy DDP wrapper (or, with
    ``--ddp-backend fully_sharded``, torch's FSDP: ``ofa.cli.sharded``).
    """
    dt = cfg.distributed_training
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dt.distributed_init_method is not None:
        return
    on_gpu = torch.cuda.is_available() and not cfg.common.cpu
    dt.distributed_init_method = "env://"
    dt.distributed_world_size = world
    dt.distributed_rank = int(os.environ["RANK"])
    dt.device_id = int(os.environ.get("LOCAL_RANK", "0")) if on_gpu else 0
    dt.distributed_no_spawn = True
    if not on_gpu:
        cfg.common.cpu = True
        dt.distributed_backend = "gloo"
        if dt.ddp_backend in ("c10d", "pytorch_ddp"):
            dt.ddp_backend = "legacy_ddp"
