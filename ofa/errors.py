"""The one base class of mistakes in what a user gave (files, options, names), as opposed to bugs.

Every command-line tool prints a ``UserError`` as one line, ``ofa-X: error: <message>``, and exits with
status 2 (``ofa.cli.common.run_cli``); anything else is a bug and keeps its traceback. The messages name
what was wrong and where: the file, the 1-based line an editor shows, the field, the option.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Base of the errors that mean "the input is wrong", not "the code is wrong".

    Subclasses also derive from the builtin type callers catch (``ValueError``, ``RuntimeError`` ...).
    """


class ConfigError(UserError, ValueError):
    """A model, task or command-line setting that is out of its type or range, unknown, or contradicts
    the checkpoint."""


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.5,
                 listing: str = "choose one of") -> str:
    """The hint after an unknown name: ``did you mean a or b?`` (up to ``n`` names at least ``cutoff`` alike,
    ``difflib``'s ratio), else ``{listing} x, y, z``."""
    choices = list(choices)
    near = difflib.get_close_matches(name, choices, n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(near)}?" if near else f"{listing} {', '.join(choices)}"


def unknown_name(kind: str, name: str, choices: Iterable[str], **hint) -> str:
    """``unknown command 'valdate'; did you mean validate?`` (``hint``: ``did_you_mean``'s options)."""
    return f"unknown {kind} {name!r}; {did_you_mean(name, choices, **hint)}"


def quoted_with_near(key: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """``'beam_sise' (did you mean 'beam_size'?)``, or only the quoted key when nothing is near: one item of
    a list of unknown keys."""
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=cutoff)
    return f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
