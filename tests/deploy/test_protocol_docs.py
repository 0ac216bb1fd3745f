"""The repository documents the outside protocols it relies on itself, in docs/protocols/, and cites
only those pages. Notes kept outside the repository (a sibling folder of the checkout, their section
numbers) cannot be followed by a newcomer with just the repository, so no tracked file may point at
them, and every ``docs/protocols/...`` a file names must exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "docs" / "protocols"
THIS = Path(__file__).resolve()
# citations of notes that are not in the repository (the team's folder beside the checkout, its
# protocol notes file) and their bare section numbers; spelled in pieces so this file cites nothing
_OUTSIDE_FOLDER = "shared" + "/" + "reference"
FORBIDDEN = re.compile(_OUTSIDE_FOLDER + r"|\.\./shared|protocols\.md|§\s?\d")
CITED_PAGE = re.compile(r"docs/protocols/([\w.-]+\.md)")
BINARY_SUFFIXES = {".wav", ".png", ".jpg", ".onnx", ".gz", ".bin", ".pcm", ".ogg", ".mp3", ".ico"}


def _tracked() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [REPO / name for name in out.decode().split("\0") if name]
    return [f for f in files if f.is_file() and f.suffix not in BINARY_SUFFIXES and f.resolve() != THIS]


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def test_no_tracked_file_cites_a_reference_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in _tracked()
        for number, line in enumerate(_text(path).splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not offenders, "cite docs/protocols/<page>.md instead:\n" + "\n".join(offenders)


def test_every_cited_protocol_page_exists() -> None:
    pages = {page.name for page in PAGES.glob("*.md")}
    missing = [
        f"{path.relative_to(REPO)}: docs/protocols/{name}"
        for path in _tracked()
        for name in CITED_PAGE.findall(_text(path))
        if name not in pages
    ]
    assert not missing, missing


def test_protocol_pages_are_indexed_name_their_sources_and_link_only_to_real_files() -> None:
    index = (PAGES / "README.md").read_text()
    pages = sorted(p for p in PAGES.glob("*.md") if p.name != "README.md")
    assert len(pages) >= 9
    for page in pages:
        text = page.read_text()
        assert f"]({page.name})" in index, f"README.md does not list {page.name}"
        assert text.startswith("# ") and "Sources:" in text, page.name
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target}"
