"""The documentation points only at things a reader of this repository can open.

A link or a file path in the README or under ``docs/``, ``alerts/``, ``deploy/``, ``bench/`` and
``dashboards/`` that names a file outside the repository (or one that was renamed) sends a reader
nowhere; so does talk of internal planning documents.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    {ROOT / "README.md", ROOT / "agent/simulator/README.md"}
    | set(ROOT.glob("docs/*.md"))
    | set(ROOT.glob("*/README.md"))
)
GENERATED = ("bench/results/",)
"""Outputs that a documented command writes; they exist only after it ran."""
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PATH = re.compile(
    r"`((?:agent|alerts|bench|dashboards|deploy|docs|scripts|tests|tools)/[\w./-]*[\w/])`"
)
INTERNAL = re.compile(r"CONTRACT\.md|\.\./shared|the contract\b|project contract", re.IGNORECASE)


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_links_and_paths_in_the_docs_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    for target in PATH.findall(text):
        if not target.startswith(GENERATED) and not any(ROOT.glob(target.rstrip("/"))):
            missing.append(target)
    assert missing == [], f"{_doc_id(doc)} points at files that are not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_docs_speak_to_users_not_about_internal_documents(doc: Path) -> None:
    hits = [line for line in doc.read_text(encoding="utf-8").splitlines() if INTERNAL.search(line)]
    assert hits == []
