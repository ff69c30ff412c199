"""The layers, read from the source: every import statement of every product module (module level and inside
functions alike), resolved to module names, and the rules the layout promises.

- The product (``ofa``, with ``tasks/``, ``criterions/``, ``data_utils/`` installed as ``ofa.tasks``,
  ``ofa.criterions``, ``ofa.data_utils``) imports nothing of the embedded benchmark (``ofa_synth``), of
  ``experiments/``, ``scripts/`` or ``bench/``, and nothing under a second name (``tasks``, ``data_utils``).
- Imports are absolute: no ``from .x import`` anywhere in the product or the benchmark.
- The ONNX runtime (``ofa_runtime``) imports numpy and onnxruntime, never torch, fairseq or ``ofa``.
- Data knows no loss (``ofa.data_utils`` -> ``ofa.criterions``), the model knows no task (``ofa.model`` ->
  ``ofa.tasks``), a criterion knows no task, one-image inference knows no task and no command line, and
  ``ofa.vqgan`` and ``ofa.data_utils`` depend on each other in one direction only.

Rules on what a module reaches are transitive over the import graph, with one stop: ``ofa/__init__.py``,
the package's public face, imports everything by design, so an edge into the bare ``ofa`` package is not
followed.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder on disk -> the module name it is installed as
PRODUCT_ROOTS = {"ofa": "ofa", "tasks": "ofa.tasks", "criterions": "ofa.criterions", "data_utils": "ofa.data_utils",
                 "ofa_runtime": "ofa_runtime"}
BENCHMARK_ROOTS = {"ofa_synth": "ofa_synth"}
OUTSIDE_THE_PRODUCT = ("ofa_synth", "experiments", "scripts", "bench", "tests")
SECOND_NAMES = ("tasks", "criterions", "data_utils")  # only ever as ofa.tasks, ...


def _modules(roots: Dict[str, str]) -> Dict[str, Path]:
    out = {}
    for folder, name in roots.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


PRODUCT = _modules(PRODUCT_ROOTS)
BENCHMARK = _modules(BENCHMARK_ROOTS)
KNOWN = {**PRODUCT, **BENCHMARK}


def _imports(path: Path) -> Set[str]:
    """Every module an import statement of ``path`` names (``from P import n`` names ``P.n`` when that is a
    module of the project, else ``P``); a relative import is named ``.`` + its text (a rule violation)."""
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.add("." * node.level + (node.module or ""))
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in KNOWN else node.module)
    return out


@lru_cache(maxsize=None)
def _direct(module: str) -> frozenset:
    return frozenset(_imports(KNOWN[module]))


def _reach(module: str) -> Set[str]:
    """Every project module ``module`` imports, directly or through other project modules (not through the
    bare ``ofa`` package, see the module docstring)."""
    seen: Set[str] = set()
    todo = [module]
    while todo:
        for target in _direct(todo.pop()):
            if target in KNOWN and target not in seen:
                seen.add(target)
                if target != "ofa":
                    todo.append(target)
    return seen


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_whole_layout():
    assert {"ofa.model.encoder", "ofa.tasks.caption", "ofa.criterions.losses", "ofa.data_utils.readers",
            "ofa.inference", "ofa.vqgan.model"} <= set(PRODUCT)
    assert {"ofa_synth.writer", "ofa_synth.main_job"} <= set(BENCHMARK)
    assert "ofa.tasks.caption" in _reach("ofa.tasks") and "ofa.data_utils.datasets" in _reach("ofa.tasks.caption")


def _violations(modules: Dict[str, Path], bad_name) -> Dict[str, list]:
    out = {}
    for module, path in modules.items():
        names = sorted(n for n in _direct(module) if bad_name(n))
        if names:
            out[_shown(path)] = names
    return out


def test_the_product_imports_only_itself_under_one_name():
    bad = _violations(PRODUCT, lambda n: _under(n, OUTSIDE_THE_PRODUCT) or _under(n, SECOND_NAMES))
    assert not bad, f"product modules import outside the product: {bad}"


def test_imports_are_absolute():
    bad = _violations(KNOWN, lambda n: n.startswith("."))
    assert not bad, f"relative imports: {bad}"


def test_the_onnx_runtime_needs_no_torch():
    bad = _violations({m: p for m, p in PRODUCT.items() if _under(m, ("ofa_runtime",))},
                      lambda n: _under(n, ("torch", "fairseq", "ofa", "ofa.tasks", "ofa.data_utils")))
    assert not bad, f"ofa_runtime imports torch, fairseq or ofa: {bad}"
    assert "ofa_runtime.beam_search" in PRODUCT


def test_the_benchmark_imports_the_product_but_no_experiment():
    bad = _violations(BENCHMARK, lambda n: _under(n, ("experiments", "scripts", "bench", "tests"))
                      or _under(n, SECOND_NAMES))
    assert not bad, f"benchmark modules import experiments or second names: {bad}"


LAYER_RULES = [
    # (modules under, must not reach, why)
    (("ofa.data_utils",), ("ofa.criterions",), "data knows no loss"),
    (("ofa.model",), ("ofa.tasks", "ofa.criterions", "ofa.data_utils", "ofa.cli"), "the model knows no task"),
    (("ofa.criterions",), ("ofa.tasks",), "a criterion knows no task"),
    (("ofa.inference", "ofa.task_config", "ofa.draw"), ("ofa.tasks", "ofa.cli"),
     "one-image inference knows no task and no command line"),
    (("ofa.data_utils",), ("ofa.vqgan",), "ofa.vqgan reads data_utils, not the other way round"),
    (("ofa.generate", "ofa.metrics", "ofa.io_utils", "ofa.tokenizer"), ("ofa.tasks", "ofa.criterions"),
     "the core knows no task and no loss"),
]


@pytest.mark.parametrize("sources,forbidden,why", LAYER_RULES, ids=[r[2] for r in LAYER_RULES])
def test_layers(sources, forbidden, why):
    bad = {}
    for module in PRODUCT:
        if _under(module, sources):
            reached = sorted(n for n in _reach(module) if _under(n, forbidden))
            if reached:
                bad[_shown(PRODUCT[module])] = reached
    assert not bad, f"{why}: {bad}"


def test_the_rules_would_catch_a_violation(tmp_path, monkeypatch):
    """The walk is not vacuous: a data module that imports a criterion lazily breaks the data rule, and one
    that imports the benchmark or imports relatively breaks those rules."""
    fake = tmp_path / "bad.py"
    fake.write_text("def f():\n    from ofa.criterions.losses import mask_logits\n    return mask_logits\n")
    monkeypatch.setitem(KNOWN, "ofa.data_utils.bad", fake)
    monkeypatch.setitem(PRODUCT, "ofa.data_utils.bad", fake)
    with pytest.raises(AssertionError, match="data knows no loss"):
        test_layers(("ofa.data_utils",), ("ofa.criterions",), "data knows no loss")
    fake.write_text("from ofa_synth.breakdown import tsv_rows\nfrom .boxes import quantize\n")
    _direct.cache_clear()
    with pytest.raises(AssertionError, match="import outside the product"):
        test_the_product_imports_only_itself_under_one_name()
    with pytest.raises(AssertionError, match="relative imports"):
        test_imports_are_absolute()
    _direct.cache_clear()


def test_the_tests_never_import_the_experiments():
    bad = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        names = sorted(n for n in _imports(path) if _under(n, ("experiments", "scripts", "bench")))
        if names:
            bad[str(path.relative_to(REPO))] = names
    assert not bad, bad


def test_no_path_hacks_anywhere():
    hack = "sys.path." + "insert"  # spelled apart, so that this file does not count itself
    offenders = [str(p.relative_to(REPO)) for folder in ("ofa", "tasks", "criterions", "data_utils", "ofa_synth",
                                                          "experiments", "bench", "tests", "scripts")
                 for p in sorted((REPO / folder).rglob("*.py")) if hack in p.read_text(encoding="utf-8")]
    assert not offenders, offenders
