"""Load the official OFA model code (OFA-Sys/OFA) from a checkout the user names, for side-by-side checks.

Nothing of the official repository is kept in this project and ``sys.path`` is never changed: the few files
needed are imported from the checkout under a private package name, ``_official_ofa``:

- ``_official_ofa``, ``_official_ofa.models``, ``_official_ofa.models.ofa``, ``_official_ofa.utils`` and
  ``_official_ofa.data`` are empty package objects whose ``__path__`` points into the checkout, so the
  checkout's ``__init__.py`` files (which import the speech model, torchaudio, the CLIP and taming code)
  are never run;
- ``models/ofa/ofa.py`` (the official ``OFAModel`` and its ``ofa_*_architecture`` functions; it pulls in
  ``unify_transformer.py``, ``unify_transformer_layer.py``, ``unify_multihead_attention.py``,
  ``resnet.py``, ``frozen_bn.py`` and ``vit.py`` through relative imports), ``models/sequence_generator.py``
  and ``utils/trie.py`` are imported as submodules of that package;
- for the duration of the import only: fairseq's ``register_model`` / ``register_model_architecture`` /
  ``register_task`` / ``register_criterion`` are identity decorators (the official code registers the model
  name ``ofa`` and the architectures ``ofa_tiny`` ... that this project registers too), and the top-level
  name ``data`` is an alias of ``_official_ofa.data`` (``sequence_generator.py`` does
  ``from data import data_utils``). Both are restored afterwards, whatever happens.

``load_official(path)`` returns an ``OfficialCode`` with the classes; ``build_official_model`` builds the
official model with a project model's hyper-parameters and copies its weights in.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

from ofa.errors import UserError

PACKAGE = "_official_ofa"
MARKER = Path("models") / "ofa" / "unify_transformer.py"  # a file every OFA checkout has
_STUB_PACKAGES = ("models", "models.ofa", "utils", "data")
_ALIASED_TOP_LEVEL = ("data",)  # absolute imports of the official files that must find the checkout
# derived buffers: computed by each model's constructor, compared before the weights are copied
DERIVED_BUFFERS = ("token_rp_bucket", "image_rp_bucket", "image_position_idx")


class OfficialCheckoutError(UserError, ValueError):
    """The path given for the official code is missing or is not a checkout of OFA-Sys/OFA."""


@dataclass
class OfficialCode:
    """The official classes, imported from ``root``."""

    root: Path
    commit: str
    OFAModel: type  # models/ofa/ofa.py
    architectures: Dict[str, Callable[[argparse.Namespace], None]]  # "ofa_tiny" -> ofa_tiny_architecture
    SequenceGenerator: type  # models/sequence_generator.py
    Trie: type  # utils/trie.py
    BeamSearch: type  # fairseq.search.BeamSearch, the search tasks/ofa_task.py builds


def check_checkout(path: Any) -> Path:
    """``path`` as a resolved ``Path``; ``OfficialCheckoutError`` (one line) when it is missing or is not an
    OFA checkout."""
    root = Path(path).expanduser()
    if not root.exists():
        raise OfficialCheckoutError(f"official OFA checkout not found: {root} (pass --official PATH, a "
                                    "checkout of https://github.com/OFA-Sys/OFA)")
    if not (root / MARKER).is_file():
        raise OfficialCheckoutError(f"{root} is not an OFA checkout: it has no {MARKER.as_posix()} "
                                    "(pass --official PATH, a checkout of https://github.com/OFA-Sys/OFA)")
    return root.resolve()


def checkout_commit(root: Path) -> str:
    """The commit of the checkout: the file ``OFFICIAL_COMMIT`` (partial exports), else ``git rev-parse
    HEAD``, else ``"unknown"``."""
    marker = root / "OFFICIAL_COMMIT"
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        if text:
            return text.split()[0]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _stub_package(name: str, folder: Path) -> types.ModuleType:
    """An empty package ``name`` whose submodules are looked up in ``folder`` (its ``__init__.py`` is not run)."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    return importlib.util.module_from_spec(spec)


@contextlib.contextmanager
def _patched(target: Any, names: Tuple[str, ...], value: Any) -> Iterator[None]:
    """Set ``target.<name> = value`` for every name that exists, restored on exit."""
    saved = {n: getattr(target, n) for n in names if hasattr(target, n)}
    try:
        for n in saved:
            setattr(target, n, value)
        yield
    finally:
        for n, v in saved.items():
            setattr(target, n, v)


def _no_registration(*_args, **_kwargs) -> Callable[[Any], Any]:
    """Stands in for fairseq's ``register_*(name, ...)``: a decorator that returns its argument unchanged."""
    return lambda obj: obj


@contextlib.contextmanager
def _quiet_registrations() -> Iterator[None]:
    import fairseq.criterions
    import fairseq.models
    import fairseq.tasks

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(fairseq.models, ("register_model", "register_model_architecture"),
                                     _no_registration))
        stack.enter_context(_patched(fairseq.tasks, ("register_task",), _no_registration))
        stack.enter_context(_patched(fairseq.criterions, ("register_criterion",), _no_registration))
        yield


@contextlib.contextmanager
def _top_level_aliases(aliases: Dict[str, types.ModuleType]) -> Iterator[None]:
    """``sys.modules[name] = module`` for each alias while the official files are imported; every entry under
    those names (and their submodules) is put back as it was afterwards."""
    def owned(key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in aliases)

    saved = {k: v for k, v in sys.modules.items() if owned(k)}
    try:
        for k in saved:
            del sys.modules[k]
        sys.modules.update(aliases)
        yield
    finally:
        for k in [k for k in sys.modules if owned(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


_LOADED: Dict[Path, OfficialCode] = {}


def load_official(path: Any) -> OfficialCode:
    """Import the official model, generator and trie from the checkout at ``path`` (once per process).

    Raises:
        OfficialCheckoutError: ``path`` is missing or not an OFA checkout.
    """
    root = check_checkout(path)
    if root in _LOADED:
        return _LOADED[root]
    if _LOADED:  # one checkout per process: the private package name is taken
        raise OfficialCheckoutError(f"official code already loaded from {next(iter(_LOADED))}; "
                                    f"cannot load a second checkout ({root}) in the same process")
    packages = {PACKAGE: _stub_package(PACKAGE, root)}
    for sub in _STUB_PACKAGES:
        name = f"{PACKAGE}.{sub}"
        packages[name] = _stub_package(name, root.joinpath(*sub.split(".")))
    for name, module in packages.items():
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(packages[parent], child, module)
    try:
        with _quiet_registrations():
            data_utils = importlib.import_module(f"{PACKAGE}.data.data_utils")
            packages[f"{PACKAGE}.data"].data_utils = data_utils  # so that `from data import data_utils` finds it
            with _top_level_aliases({"data": packages[f"{PACKAGE}.data"]}):
                ofa_py = importlib.import_module(f"{PACKAGE}.models.ofa.ofa")
                generator = importlib.import_module(f"{PACKAGE}.models.sequence_generator")
            trie = importlib.import_module(f"{PACKAGE}.utils.trie")
    except Exception as e:
        for name in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        if isinstance(e, ImportError):  # a checkout of another layout, or a dependency it needs is missing
            raise OfficialCheckoutError(f"cannot import the official model code from {root}: {e}") from e
        raise
    from fairseq.search import BeamSearch

    archs = {name[: -len("_architecture")]: fn for name, fn in vars(ofa_py).items()
             if name.startswith("ofa_") and name.endswith("_architecture") and callable(fn)}
    code = OfficialCode(root=root, commit=checkout_commit(root), OFAModel=ofa_py.OFAModel, architectures=archs,
                        SequenceGenerator=generator.SequenceGenerator, Trie=trie.Trie, BeamSearch=BeamSearch)
    _LOADED[root] = code
    return code


# ---------------------------------------------------------------------------- building the official model
def official_args(project_cfg: Any, arch: str, code: OfficialCode, patch_image_size: int) -> argparse.Namespace:
    """The official model's arguments: every field of the project's config (same names as the official
    arguments), then the official ``<arch>_architecture`` function for the arguments the project does not
    have (it keeps values already set), as ``fairseq`` would call it."""
    if arch not in code.architectures:
        raise OfficialCheckoutError(f"the official checkout {code.root} has no {arch}_architecture "
                                    f"(it has {', '.join(sorted(code.architectures))})")
    args = argparse.Namespace(**dataclasses.asdict(project_cfg), arch=arch, patch_image_size=patch_image_size)
    code.architectures[arch](args)
    return args


def arch_mismatches(project_cfg: Any, arch: str, code: OfficialCode) -> Dict[str, Tuple[Any, Any]]:
    """Fields where the official ``<arch>_architecture`` defaults (plus the project's released flags, which
    released checkpoints set on the command line) differ from the project's config: ``{name: (project,
    official)}``. Empty when the presets agree."""
    from ofa.model.config import RELEASED_FLAGS

    args = argparse.Namespace(**RELEASED_FLAGS)
    code.architectures[arch](args)
    out = {}
    for f in dataclasses.fields(project_cfg):
        if hasattr(args, f.name):
            mine, theirs = getattr(project_cfg, f.name), getattr(args, f.name)
            if mine != theirs and not (isinstance(mine, bool) and theirs is None and mine is False):
                out[f.name] = (mine, theirs)
    return out


class _Task:
    """What the official ``build_model`` reads of a task: the two dictionaries."""

    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def build_official_model(project_model: torch.nn.Module, dictionary, arch: str, code: OfficialCode,
                         patch_image_size: int) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The official ``OFAModel`` with ``project_model``'s hyper-parameters and weights (eval mode, CPU).

    Returns:
        ``(model, report)``: ``report`` has ``derived_buffers_equal`` (the relative-position buckets and image
        position ids each side computed), ``missing_keys`` (official entries the project's state dict does not
        have: the ``version`` buffers) and ``arch_mismatches``.

    Raises:
        RuntimeError: the project's state dict has a key the official model lacks or a shape differs.
    """
    args = official_args(project_model.cfg, arch, code, patch_image_size)
    model = code.OFAModel.build_model(args, _Task(dictionary))
    mine, theirs = project_model.state_dict(), model.state_dict()
    derived = sorted(k for k in theirs if k.endswith(DERIVED_BUFFERS))
    derived_equal = all(k in mine and torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in derived)
    result = model.load_state_dict(mine, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"project weights the official model does not have: {result.unexpected_keys[:5]}")
    missing: List[str] = list(result.missing_keys)
    if any(not k.endswith("version") for k in missing):
        raise RuntimeError(f"official weights the project model does not have: {missing[:5]}")
    report = dict(derived_buffers=derived, derived_buffers_equal=derived_equal, missing_keys=missing,
                  arch_mismatches={k: list(v) for k, v in arch_mismatches(project_model.cfg, arch, code).items()})
    return model.eval(), report
