"""The documentation holds: every citation of ``docs/*.md`` in the code and the README names a file and a
section that exist in the project, the README is a user's guide (its two newcomer commands, a layout row for
every top-level folder, paths that exist) and CI runs the README's test command."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
CITATION = re.compile(r"(?:docs/)?\b(architecture|tasks)\.md\b")
SECTION = re.compile(r"^\s*(?:,|and|-|sections?)?\s*(\d+(?:\.\d+)?)(?![\d.]*\w)")
SETUP_MAIN_JOB = "bash scripts/setup.sh && .venv/bin/ofa-synth run"
SETUP_TESTS = "bash scripts/setup.sh && .venv/bin/python -m pytest -q tests"


def _tracked(*patterns: str):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / p for p in out.stdout.splitlines()]


def _headings(doc: str):
    lines = (REPO / "docs" / doc).read_text(encoding="utf-8").splitlines()
    return {m.group(1) for line in lines if (m := re.match(r"#+\s+(\d+(?:\.\d+)?)[.\s]", line))}


def cited_sections(text: str):
    """``(doc, section or None)`` for every citation: ``docs/tasks.md 2.2, 2.9, 5`` -> tasks.md 2.2, 2.9, 5."""
    for m in CITATION.finditer(text):
        doc, rest, found = f"{m.group(1)}.md", text[m.end():m.end() + 60], False
        while (s := SECTION.match(rest)) is not None:
            found = True
            yield doc, s.group(1)
            rest = rest[s.end():]
        if not found:
            yield doc, None


def test_the_citation_reader_reads_lists_ranges_and_bare_files():
    assert list(cited_sections("(docs/tasks.md 2.2, 2.9, 5): image")) == [("tasks.md", "2.2"), ("tasks.md", "2.9"),
                                                                            ("tasks.md", "5")]
    assert list(cited_sections("docs/tasks.md 3.2-3.3), x")) == [("tasks.md", "3.2"), ("tasks.md", "3.3")]
    assert list(cited_sections("architecture.md section 4).")) == [("architecture.md", "4")]
    assert list(cited_sections("see ``docs/architecture.md`` for")) == [("architecture.md", None)]
    assert list(cited_sections("docs/tasks.md 2.x")) == [("tasks.md", None)]


def test_every_docs_citation_resolves_to_a_file_and_section_of_the_project():
    files = _tracked("*.py", "*.sh", "*.md") + [REPO / "README.md"]
    missing = []
    for path in files:
        if not path.is_file() or path.parent == REPO / "docs":
            continue
        for doc, section in cited_sections(path.read_text(encoding="utf-8")):
            if not (REPO / "docs" / doc).is_file():
                missing.append(f"{path.relative_to(REPO)}: docs/{doc}")
            elif section is not None and section not in _headings(doc):
                missing.append(f"{path.relative_to(REPO)}: docs/{doc} section {section}")
    assert not missing, missing


def test_no_project_file_cites_the_shared_material():
    bad = [str(p.relative_to(REPO)) for p in _tracked("*.py", "*.sh", "*.md", "*.cfg", "*.ini", "*.toml")
           if p.is_file() and not p.is_relative_to(REPO / "tests") and "../shared" in p.read_text(encoding="utf-8")]
    assert bad == [str(Path("README.md"))]  # the README says the parity tests read it, and skip without it


def test_the_readme_is_a_guide_with_the_two_newcomer_commands():
    assert SETUP_MAIN_JOB in README and SETUP_TESTS in README
    assert len(README.splitlines()) <= 260
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and SETUP_TESTS.split(" && ")[1] in ci  # CI runs what the README says


def test_the_layout_table_names_every_top_level_folder():
    folders = {p.relative_to(REPO).parts[0] for p in _tracked() if len(p.relative_to(REPO).parts) > 1}
    rows = set(re.findall(r"^\| `([^`/]+)/` \|", README, flags=re.M))
    assert folders <= rows, f"folders without a layout row: {sorted(folders - rows)}"
    assert rows <= folders | {".ci"}, f"layout rows of no folder: {sorted(rows - folders)}"


def test_the_paths_the_readme_names_exist():
    named = set(re.findall(r"`((?:ofa|tasks|criterions|data_utils|run_scripts|ofa_synth|docs|tests|bench|experiments|"
                           r"scripts)/[\w./-]*)`", README))
    missing = sorted(p for p in named if not (REPO / p.rstrip("/")).exists())
    assert not missing, missing
