"""``python -m ofa.data_utils.synth OUT_DIR ...``"""
import sys

from .cli import main

sys.exit(main())
