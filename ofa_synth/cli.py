"""``ofa-synth``: the embedded benchmark's command line.

    ofa-synth run [--quick] [--out runs/main_job] [...]        the main job: benchmark, training, evaluation
    ofa-synth generate OUT_DIR [--num-images N] [--seed S]     the multi-task benchmark (official TSV layouts)
    ofa-synth text OUT_DIR [--num N] [--seed S]                text-only data (summaries, GLUE-style, corpus)
    ofa-synth pretrain OUT_DIR [--vqgan DIR] [...]             pretraining sources of the unify task
    ofa-synth image-gen OUT_DIR --vqgan DIR [...]              text-to-image rows (VQGAN codes of scenes)

``ofa-synth COMMAND --help`` lists a command's options.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from ofa.console import run_cli
from ofa.errors import ConfigError, unknown_name

# command -> module whose ``main(argv)`` runs it
COMMANDS = {
    "run": "ofa_synth.main_job",
    "generate": "ofa_synth.writer",
    "text": "ofa_synth.text",
    "pretrain": "ofa_synth.pretrain",
    "image-gen": "ofa_synth.image_gen",
}


def _main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        raise ConfigError(unknown_name("command", argv[0], COMMANDS, n=1, cutoff=0.6))
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0


def main(argv: Optional[List[str]] = None) -> int:
    """Mistakes (bad data or options, missing files) in one line ``ofa-synth: error: ...``, exit status 2."""
    return run_cli("ofa-synth", _main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
