"""Run the table of mistakes (``tests/test_mistakes.py``) against an older tree of the project and the
current one, and print what each case got in each: the before/after table of issue 17's closing note.

    git worktree add /tmp/ofa_before 6b6a4ed
    .venv/bin/python experiments/mistakes_before_after.py --before /tmp/ofa_before \
        --out experiments/results/mistakes_before_after.json

The world (data, tokenizer, a 2-update caption checkpoint, the hand-made bad files) is built once by the
current code; every case runs in its own interpreter on a fresh copy of it, with the installed package's
modules pointed at the tree under test (the editable install's ``MAPPING``), a 12 GiB address-space limit
(the old code tried to allocate 128 GB for some checkpoints) and a time limit. A case passes when
``tests/test_mistakes.verdict`` says nothing and no file was lost.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load_table():
    spec = importlib.util.spec_from_file_location("mistakes_table", ROOT / "tests" / "test_mistakes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def point_package_at(tree: Path) -> None:
    """Make ``import ofa`` (and its mapped folders) load from ``tree`` (before anything imports it)."""
    finder = next(m for name, m in sys.modules.items() if name.startswith("__editable___ofa"))
    for name in list(finder.MAPPING):
        finder.MAPPING[name] = str(tree / os.path.relpath(finder.MAPPING[name], ROOT))


def run_one(tree: Path, world: Path, index: int) -> dict:
    """In this interpreter (a child): one case on ``world`` with the package from ``tree``."""
    import __editable___ofa_fairseq_0_1_0_finder  # noqa: F401  (the editable install's finder)

    point_package_at(tree)
    table = load_table()
    case = table.CASES[index]
    os.environ["OFA_CACHE"] = str(world / "cache")
    os.environ.pop("OFA_OFFLINE", None)
    before = table._snapshot(world)
    outcome = table.run_case(case, world)
    import ofa

    assert Path(ofa.__file__).resolve().is_relative_to(tree.resolve()), ofa.__file__
    lost = table.lost_files(before, world, case)
    wrong = table.verdict(case, outcome)
    return {"status": outcome.status, "last_line": outcome.last_line[:300], "traceback": outcome.traceback,
            "lost": lost, "verdict": wrong, "ok": wrong is None and not lost}


def child(tree: Path, world: Path, index: int, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "world"
        shutil.copytree(world, copy, symlinks=True)

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))

        cmd = [sys.executable, __file__, "--child", str(index), "--tree", str(tree), "--world", str(copy)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit, env=env)
        except subprocess.TimeoutExpired:
            return {"status": None, "last_line": f"(still running after {timeout} s)", "ok": False,
                    "verdict": "timeout", "traceback": False, "lost": []}
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            tail = (run.stderr.strip().splitlines() or ["(nothing)"])[-1]
            return {"status": run.returncode, "last_line": f"(the interpreter died: {tail[:250]})", "ok": False,
                    "verdict": "died", "traceback": "Traceback" in run.stderr, "lost": []}
        return json.loads(lines[-1][len("RESULT "):])


def describe(result: dict) -> str:
    if result["verdict"] in ("timeout", "died"):
        return result["last_line"]
    how = "traceback" if result["traceback"] else f"exit {result['status']}"
    return f"{how}: {result['last_line']}" + (f" [lost {', '.join(result['lost'])}]" if result["lost"] else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="the older tree (a git worktree)")
    parser.add_argument("--after", type=Path, default=ROOT, help="the current tree (default: this one)")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument("--timeout", type=int, default=240)
    parser.add_argument("--only", help="run the cases whose id contains this text")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(run_one(args.tree, args.world, args.child)), flush=True)
        return 0
    if not args.before:
        parser.error("--before is required")
    table = load_table()
    cases = [(i, c) for i, c in enumerate(table.CASES) if not args.only or args.only in c.id]
    with tempfile.TemporaryDirectory() as tmp:
        world = table.build_world(Path(tmp) / "world")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            before = list(pool.map(lambda ic: child(args.before, world, ic[0], args.timeout), cases))
            after = list(pool.map(lambda ic: child(args.after, world, ic[0], args.timeout), cases))
    rows = [{"id": c.id, "area": c.area, "prog": c.prog, "expected_status": c.status,
             "expected": c.message, "before": b, "after": a} for (_, c), b, a in zip(cases, before, after)]
    print("| case | before | after |\n|---|---|---|")
    for r in rows:
        mark = lambda x: ("ok" if x["ok"] else "FAIL") + " - " + describe(x).replace("|", "\\|")  # noqa: E731
        print(f"| {r['id']} | {mark(r['before'])} | {mark(r['after'])} |")
    held = [sum(r[k]["ok"] for r in rows) for k in ("before", "after")]
    print(f"\n{len(rows)} cases: {held[0]} held before, {held[1]} after")
    if args.out:
        args.out.write_text(json.dumps({"before_tree": str(args.before), "cases": rows,
                                        "held_before": held[0], "held_after": held[1]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
