"""How every console script talks to a person: a mistake in what was given is one line, ``PROG: error: ...``,
with exit status 2; logging and the stack's known warnings are quiet unless ``--verbose`` is given.

A leaf module (it imports only ``ofa.errors``), so that any command, however low in the layers
(``ofa-tokenizer``, ``ofa-checkpoints``), can use it.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Callable, List, Optional, Sequence

from ofa.errors import UserError

# Warnings of the stack that say nothing to a user of these commands (shown again with --verbose).
_NOISE = (
    (FutureWarning, r".*torch\.jit.*"),  # fairseq scripts modules with torch.jit
    (DeprecationWarning, r".*torch\.jit.*"),
    (FutureWarning, r".*torch\.cuda\.amp\.autocast.*"),  # fairseq's train step, on the CPU too
    (UserWarning, r".*pin_memory.*"),  # fairseq's loaders ask for pinned memory on the CPU too
    (UserWarning, r".*[Tt]ensorboard.*"),
    (UserWarning, r".*strict flag.*"),  # hydra's compose API, as fairseq calls it
    (UserWarning, r".*(Hydra|hydra\.).*"),  # hydra deprecations, attributed to fairseq's or our frames
)
# libraries whose UserWarnings are about how fairseq calls them (hydra's deprecated initialize / compose)
_NOISY_MODULES = (r"hydra(\..*)?$",)


def quiet(verbose: bool = False) -> None:
    """Logging and warnings for a command: INFO lines of ``ofa`` and fairseq on stderr, the stack's known
    noise (``_NOISE``) filtered; ``verbose`` shows everything at DEBUG."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("PIL", "matplotlib", "h5py", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        warnings.resetwarnings()
        return
    for module in _NOISY_MODULES:
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    for category, pattern in _NOISE:
        warnings.filterwarnings("ignore", message="(?s)" + pattern, category=category)  # messages may start "\n"


def one_line(error: BaseException) -> str:
    """The first line of an error's message (the type's name when it has none); an ``OSError`` with a
    file name says which file."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        name = str(error.filename)
        message = error.strerror if name in error.strerror else f"{name}: {error.strerror}"
    else:
        message = str(error).strip()
    if isinstance(error, KeyError) and message.startswith("'"):
        message = message.strip("'")
    return message.splitlines()[0] if message else type(error).__name__


USER_MISTAKES = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def run_cli(prog: str, main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run a command's ``main(argv)``: ``--verbose`` (taken out of ``argv``) shows every log line and warning;
    a mistake of the user (``ofa.errors.UserError``, a missing or unreadable file) ends in one line
    ``PROG: error: ...`` on stderr and exit status 2, Ctrl-C in ``PROG: interrupted`` and 130; argparse's
    exits become the returned status (so that calling ``main`` from Python returns). Any other exception is
    a bug and keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    quiet(verbose)
    try:
        status = main(argv)
    except (UserError,) + USER_MISTAKES as e:
        if verbose:
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse has printed its usage and one error line
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"{prog}: error: {e.code}", file=sys.stderr)
        return 2
    return int(status or 0)


