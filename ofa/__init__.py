"""OFA (arXiv 2202.03052) as a fairseq plugin.

Importing ``ofa`` registers the ``ofa`` model and its architectures (``ofa_tiny`` .. ``ofa_huge``,
``ofa_test``), the tasks (``ofa.tasks``, from the repository's ``tasks/``) and the criteria
(``ofa.criterions``) with fairseq; ``--user-dir=<path to this folder>`` does the same for fairseq's CLIs.
"""
__version__ = "0.1.0"

import logging as _logging

from ofa import model  # noqa: F401  (registers the model and architectures)
from ofa import criterions, data_utils, tasks  # noqa: F401  (register tasks and criteria; see setup.py)
from ofa.checkpoint import build_model_for_arch, export_safetensors, load_model, save_checkpoint
from ofa.generate import SequenceGenerator, Trie
from ofa.hub import resolve_checkpoint  # noqa: F401  (checkpoints by name / URL / path; see ofa/hub.py)
from ofa.inference import inference_model  # noqa: F401
from ofa.tokenizer import load_tokenizer

# importing fairseq leaves the root logger at DEBUG, which makes PIL log every PNG chunk
_logging.getLogger("PIL").setLevel(_logging.INFO)

__all__ = ["inference_model", "resolve_checkpoint", "load_model", "build_model_for_arch", "export_safetensors",
           "save_checkpoint", "SequenceGenerator", "Trie", "load_tokenizer", "__version__"]
