"""``ofa-train``: fairseq training with the OFA plugin.

    ofa-train DATA --task caption --arch ofa_tiny --bpe-dir BPE --criterion adjust_label_smoothed_cross_entropy ...
    torchrun --nproc_per_node=N $(which ofa-train) ...          # several processes or nodes (GPU: NCCL)
    torchrun --nproc_per_node=2 $(which ofa-train) --cpu ...    # CPU processes (gloo)

Every fairseq training flag works (``--tensorboard-logdir DIR`` writes training and validation curves for
TensorBoard). Checkpoints are written to a temporary file and renamed, so a killed run never leaves a
half-written checkpoint; ``--restore-file`` accepts official checkpoints. Re-running a command whose
``checkpoint_last.pt`` already reached ``--max-update`` / ``--max-epoch`` does nothing and says so.
Mistakes (unknown task, missing data file or tokenizer folder, no batch size) end in one line
``ofa-train: error: ...`` with exit status 2; ``--verbose`` shows tracebacks and every log line.
``--ddp-backend fully_sharded`` (with torchrun) shards the weights, gradients and optimizer state over the
processes with torch's FSDP, on GPUs and CPUs alike, and still writes whole checkpoints (``ofa.cli.sharded``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ofa.cli.common import check_task, configure_distributed, import_user_dir, run_cli, setup
from ofa.cli.sharded import prepare as prepare_sharding
from ofa.errors import ConfigError

logger = logging.getLogger("ofa.train")


def finished_run(cfg) -> Optional[str]:
    """Why training would do nothing, or ``None``: the checkpoint fairseq would resume from (``checkpoint_last.pt``
    in ``--save-dir``, unless ``--restore-file`` names another or ``--reset-optimizer`` restarts the count)
    already reached ``--max-update`` or finished ``--max-epoch``."""
    ck = cfg.checkpoint
    if ck.restore_file != "checkpoint_last.pt" or ck.reset_optimizer:
        return None
    path = os.path.join(ck.save_dir, f"checkpoint_last{ck.checkpoint_suffix or ''}.pt")
    if not os.path.isfile(path):
        return None
    import torch

    from ofa.checkpoint import SAFE_GLOBALS

    # added for good (as ``setup`` does), not with the ``safe_globals`` context: leaving it removes the globals
    # again, also the ones ``setup`` had added, and fairseq's own load of this file (an --optimizer sgd run's
    # config holds an argparse.Namespace) was then refused
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    history = state.get("optimizer_history") or [{}]
    updates = int(history[-1].get("num_updates", 0))
    epoch = int(((state.get("extra_state") or {}).get("train_iterator") or {}).get("epoch", 1))
    opt = cfg.optimization
    if opt.max_update and updates >= opt.max_update:
        return f"{path} is at update {updates}, --max-update is {opt.max_update}"
    if opt.max_epoch and epoch > opt.max_epoch:
        return f"{path} finished epoch {epoch - 1}, --max-epoch is {opt.max_epoch}"
    return None


def _precheck(argv: List[str]) -> None:
    """The mistakes fairseq would answer with a traceback (or a list of every fairseq task), checked first."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--user-dir")
    known, _ = pre.parse_known_args(argv)
    import_user_dir(known.user_dir)
    if known.task:
        check_task(known.task)


def train(argv: List[str]) -> int:
    setup()
    from fairseq import checkpoint_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli.train import main as train_main

    _precheck(argv)
    # fairseq keeps the best validation score on a function attribute; a second run in the same
    # process (tests, notebooks) must not inherit the first run's best
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    parser = options.get_training_parser()
    parser.prog = "ofa-train"
    args = options.parse_args_and_arch(parser, input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        raise ConfigError("no batch size: give --batch-size N (sentences) or --max-tokens N")
    done = finished_run(cfg)
    if done:
        print(f"ofa-train: nothing to do: {done}; raise the limit to train on, or give another --save-dir")
        return 0
    # OFA's data is a comma list of files, not fairseq's folder of split files: fairseq's check for
    # "valid subsets left unused" would try to list it as a folder
    cfg.dataset.ignore_unused_valid_subsets = True
    if cfg.common.log_file:  # fairseq opens it before it creates --save-dir: make its folder
        os.makedirs(os.path.dirname(os.path.abspath(cfg.common.log_file)), exist_ok=True)
    configure_distributed(cfg)
    prepare_sharding(cfg, cfg.distributed_training.distributed_world_size)
    distributed_utils.call_main(cfg, train_main)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli("ofa-train", train, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
