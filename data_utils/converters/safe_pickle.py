"""Loading untrusted pickles (e.g. RefCOCO ``refs(unc).p``) that should hold only plain data.

``pickle`` runs arbitrary code through globals (``os.system`` via ``__reduce__``, ...). This unpickler resolves
no global except the plain builtin container/scalar types, so such a pickle is refused before anything runs.
"""
from __future__ import annotations

import builtins
import pickle
from typing import Any

from ofa.data_utils.errors import DataError

# the only globals a plain-data pickle may name (Python 2 pickles say ``__builtin__``)
_ALLOWED = {"dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool"}
_BUILTIN_MODULES = {"builtins", "__builtin__"}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in _BUILTIN_MODULES and name in _ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"refused global {module}.{name}: only plain data (dict/list/tuple/str/int/float/bool) is allowed")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: only plain data is allowed")


def safe_load(path: str, what: str = "pickle") -> Any:
    """Load a pickle holding only plain builtin data; anything else raises ``DataError`` naming the file."""
    try:
        with open(path, "rb") as f:
            # Python 2 pickles (the RefCOCO releases) hold text as byte strings: decode them as UTF-8
            return RestrictedUnpickler(f, encoding="utf-8").load()
    except FileNotFoundError:
        raise DataError(f"{what} file does not exist", path) from None
    except pickle.UnpicklingError as e:
        raise DataError(f"{what} file is refused or unreadable as plain data: {e}", path) from None
    except (EOFError, UnicodeDecodeError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OSError, ImportError) as e:
        raise DataError(f"{what} file is not a readable pickle ({type(e).__name__}: {e})", path) from None
