"""``python -m ofa_synth COMMAND ...`` is ``ofa-synth COMMAND ...``."""
import sys

from ofa_synth.cli import main

sys.exit(main())
