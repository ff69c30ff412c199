"""OFA (arXiv 2202.03052) as a fairseq plugin.

Importing ``ofa`` registers the ``ofa`` model and its architectures (``ofa_tiny`` .. ``ofa_huge``,
``ofa_test``), the tasks (``ofa.tasks``, from the repository's ``tasks/``) and the criteria
(``ofa.criterions``) with fairseq; ``--user-dir=<path to this folder>`` does the same for fairseq's CLIs.
"""
__version__ = "0.1.0"

import logging as _logging
import os as _os
import sys as _sys
import warnings as _warnings


def _import_fairseq_quietly() -> None:
    """Import fairseq's registries without its side effects on the importing program.

    ``fairseq.tasks`` imports every task module; two of them call ``logging.basicConfig`` (the root
    logger then prints DEBUG lines of every library) and log "Please install tensorboardX", and several
    modules are decorated with ``torch.jit.script`` (a ``FutureWarning`` on torch >= 2.9). Here the root
    logger's level and handlers are put back as they were, and those warnings are not shown, unless
    ``OFA_VERBOSE=1`` is set or a command was given ``--verbose``.
    """
    verbose = _os.environ.get("OFA_VERBOSE", "") not in ("", "0") or "--verbose" in _sys.argv[1:]
    root = _logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with _warnings.catch_warnings():
        if not verbose:
            _warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
            _warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"fairseq.*")
        import fairseq.models  # noqa: F401
        import fairseq.tasks  # noqa: F401
    if not verbose:
        root.setLevel(level)
        root.handlers[:] = handlers


_import_fairseq_quietly()

from ofa import model  # noqa: E402, F401  (registers the model and architectures)
from ofa import criterions, data_utils, tasks  # noqa: E402, F401  (register tasks and criteria; see setup.py)
from ofa.checkpoint import build_model_for_arch, export_safetensors, load_model, save_checkpoint  # noqa: E402
from ofa.generate import SequenceGenerator, Trie  # noqa: E402
from ofa.hub import resolve_checkpoint  # noqa: E402, F401  (checkpoints by name / URL / path; see ofa/hub.py)
from ofa.inference import inference_model  # noqa: E402, F401
from ofa.ranking import rank  # noqa: E402, F401  (image-text matching scores; see ofa/ranking.py)
from ofa.tokenizer import load_tokenizer  # noqa: E402

__all__ = ["inference_model", "rank", "resolve_checkpoint", "load_model", "build_model_for_arch", "export_safetensors",
           "save_checkpoint", "SequenceGenerator", "Trie", "load_tokenizer", "__version__"]
