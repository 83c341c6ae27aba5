"""The documentation a clone of this repository has is the documentation the code points to.

- No source, config or documentation file names a design document that lives outside the repository (the
  project's notes once sat in a sibling `shared` folder that a user's clone does not have); pointers go to
  `docs/`, and every `docs/<page>.md` they name exists.
- A pointer of the form `docs/<page>.md (Section)` names a real heading of that page.
- Every relative Markdown link `](path)` in README.md and docs/*.md resolves to an existing file or directory,
  and its `#anchor`, when it has one and points at a Markdown file, to a heading there.
- Every `path.py::name` (or `path.py::Class.member`) that docs/*.md cites is defined in that file.

Pure file reads: no Ray, no torch.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".toml", ".sh", ".cfg")
SCANNED_NAMES = ("Makefile", "Dockerfile")
# Directories that are not the project's sources: virtual environments, caches, run outputs, VCS metadata.
PRUNED_DIRS = {"runs", "outputs", "multirun", "__pycache__", "node_modules"}

# Documents that once lived outside the repository. Built from parts so this file does not match itself.
EXTERNAL_STEMS = ("DESIGN", "PAPER", "CORPORA", "RAY", "LEARNING", "STYLE")
EXTERNAL_DOC = re.compile(r"\b(?:" + "|".join(EXTERNAL_STEMS) + r")\.md\b")
EXTERNAL_DIR = re.compile(r"\bshared[/\\]docs\b")
DOCS_PAGE = re.compile(r"(?<![\w./-])docs/([\w-]+\.md)")
DOCS_SECTION = re.compile(r"(?<![\w./-])docs/([\w-]+\.md) \(([^()\n]+)\)")
MD_LINK = re.compile(r"\]\(([^()\s]+)\)")
CODE_REF = re.compile(r"`((?:[\w-]+/)*[\w-]+\.py)::([A-Za-z_][\w.]*)`")


def repo_files() -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in PRUNED_DIRS
            and not d.endswith(".egg-info")
            and not (here == ROOT and d == "shared")  # the sibling notes folder, when a checkout carries one
        )
        for name in sorted(filenames):
            if name.endswith(SCANNED_SUFFIXES) or name in SCANNED_NAMES:
                yield here / name


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces
    to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def headings(path: Path) -> tuple[list[str], set[str]]:
    """(heading texts, anchors) of a Markdown file; fenced code blocks are skipped, repeated anchors get -1, -2."""
    titles: list[str] = []
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in read(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        titles.append(m.group(1))
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return titles, anchors


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_docs_folder_exists() -> None:
    for page in ("README.md", "architecture.md", "paper-to-code.md", "corpora.md", "ray.md"):
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


def test_no_file_points_at_documents_outside_the_repository() -> None:
    problems = []
    for path in repo_files():
        for lineno, line in enumerate(read(path).splitlines(), start=1):
            for m in (*EXTERNAL_DOC.finditer(line), *EXTERNAL_DIR.finditer(line)):
                problems.append(f"{rel(path)}:{lineno}: {m.group(0)!r} (point at docs/ instead): {line.strip()}")
    assert not problems, "pointers to documents a clone does not have:\n" + "\n".join(problems)


def test_every_docs_page_that_files_name_exists_and_named_sections_are_headings() -> None:
    problems = []
    for path in repo_files():
        text = read(path)
        for lineno, line in enumerate(text.splitlines(), start=1):
            for m in DOCS_PAGE.finditer(line):
                if not (DOCS / m.group(1)).is_file():
                    problems.append(f"{rel(path)}:{lineno}: docs/{m.group(1)} does not exist")
            for m in DOCS_SECTION.finditer(line):
                page = DOCS / m.group(1)
                if not page.is_file():
                    continue
                titles, _ = headings(page)
                wanted = m.group(2).strip().replace("`", "").lower()
                if wanted not in {t.replace("`", "").lower() for t in titles}:
                    problems.append(f"{rel(path)}:{lineno}: docs/{m.group(1)} has no section {m.group(2)!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", markdown_pages(), ids=rel)
def test_relative_markdown_links_resolve(page: Path) -> None:
    problems = []
    fenced = False
    for lineno, line in enumerate(read(page).splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.exists():
                problems.append(f"{rel(page)}:{lineno}: {target} -> {path_part} does not exist")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in headings(resolved)[1]:
                problems.append(f"{rel(page)}:{lineno}: {target} -> no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


def _defined_names(tree: ast.Module) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names[n.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets if isinstance(t, ast.Name))
    return members


@cache
def _module(path: Path) -> dict[str, ast.AST]:
    return _defined_names(ast.parse(read(path), filename=str(path)))


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=rel)
def test_code_references_in_docs_exist(page: Path) -> None:
    problems = []
    for lineno, line in enumerate(read(page).splitlines(), start=1):
        for m in CODE_REF.finditer(line):
            file, dotted = ROOT / m.group(1), m.group(2)
            if not file.is_file():
                problems.append(f"{rel(page)}:{lineno}: {m.group(1)} does not exist")
                continue
            first, *rest = dotted.split(".")
            node = _module(file).get(first)
            if node is None:
                problems.append(f"{rel(page)}:{lineno}: {m.group(1)} defines no {first!r}")
            elif rest and (not isinstance(node, ast.ClassDef) or rest[0] not in _class_members(node)):
                problems.append(f"{rel(page)}:{lineno}: {m.group(1)}::{first} has no member {rest[0]!r}")
    assert not problems, "\n".join(problems)
