"""The one base class of mistakes in what a user gave (files, options, names), as opposed to bugs.

Every command-line tool prints a ``UserError`` as one line, ``ofa-X: error: <message>``, and exits with
status 2 (``ofa.cli.common.run_cli``); anything else is a bug and keeps its traceback. The messages name
what was wrong and where: the file, the 1-based line an editor shows, the field, the option.
"""
from __future__ import annotations


class UserError(Exception):
    """Base of the errors that mean "the input is wrong", not "the code is wrong".

    Subclasses also derive from the builtin type callers catch (``ValueError``, ``RuntimeError`` ...).
    """


class ConfigError(UserError, ValueError):
    """A model, task or command-line setting that is out of its type or range, unknown, or contradicts
    the checkpoint."""
