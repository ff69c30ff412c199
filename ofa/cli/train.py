"""``ofa-train``: fairseq training with the OFA plugin.

    ofa-train DATA --task caption --arch ofa_tiny --bpe-dir BPE --criterion adjust_label_smoothed_cross_entropy ...
    torchrun --nproc_per_node=N $(which ofa-train) ...          # several processes or nodes (GPU: NCCL)
    torchrun --nproc_per_node=2 $(which ofa-train) --cpu ...    # CPU processes (gloo)

Every fairseq training flag works. Checkpoints are written to a temporary file and renamed, so a
killed run never leaves a half-written checkpoint; ``--restore-file`` accepts official checkpoints.
"""
from __future__ import annotations

import os
import sys

from ofa.cli.common import configure_distributed, setup


def main(argv=None) -> None:
    setup()
    from fairseq import checkpoint_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli.train import main as train_main

    # fairseq keeps the best validation score on a function attribute; a second run in the same
    # process (tests, notebooks) must not inherit the first run's best
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    # OFA's data is a comma list of files, not fairseq's folder of split files: fairseq's check for
    # "valid subsets left unused" would try to list it as a folder
    cfg.dataset.ignore_unused_valid_subsets = True
    if cfg.common.log_file:  # fairseq opens it before it creates --save-dir: make its folder
        os.makedirs(os.path.dirname(os.path.abspath(cfg.common.log_file)), exist_ok=True)
    configure_distributed(cfg)
    distributed_utils.call_main(cfg, train_main)


if __name__ == "__main__":
    main(sys.argv[1:])
