"""scripts/install-rhvoice.sh: the private source list it derives from the system's own sources, run
with stub dpkg/apt-get/id (no installs); the system's source files are never written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-rhvoice.sh"
PACKAGES = ["librhvoice5", "librhvoice-core7", "rhvoice-russian"]
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = f"""Types: deb
# a comment
URIs: http://archive.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://security.invalid/debian-security
Suites: bookworm-security
Components: main
"""
ONE_LINE = """# the classic format
deb-src http://archive.invalid/debian bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/k.gpg] http://archive.invalid/debian bookworm main contrib
deb http://archive.invalid/debian bookworm-updates main
"""


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def run(
    tmp_path: Path, *, sources: dict[str, str], uid: int = 0, installed: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    etc, stubs, state, calls = tmp_path / "etc", tmp_path / "bin", tmp_path / "state", tmp_path / "calls"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in sources.items():
        (etc / name).write_text(text)
    stubs.mkdir()
    calls.touch()
    _stub(stubs, "id", f'[[ "$1" == "-u" ]] && echo {uid} || /usr/bin/id "$@"')
    _stub(
        stubs,
        "dpkg",
        f"for p in {' '.join(installed) or 'none'}; do\n"
        '  [[ "$2" == "$p" ]] && echo "Status: install ok installed" && exit 0\n'
        "done\nexit 1",
    )
    _stub(stubs, "apt-get", f'echo "apt-get $*" >> {calls}')
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "VP_APT_ETC": str(etc),
        "VP_RHVOICE_APT_DIR": str(state),
        "VP_RHVOICE_SUITE": "bookworm",
    }
    before = {p: p.read_text() for p in etc.rglob("*") if p.is_file()}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert {p: p.read_text() for p in etc.rglob("*") if p.is_file()} == before  # system sources untouched
    return proc, calls.read_text().splitlines(), state


def test_present_is_silent_and_touches_no_apt(tmp_path: Path) -> None:
    proc, calls, _ = run(
        tmp_path, sources={"sources.list.d/debian.sources": DEB822}, installed=tuple(PACKAGES)
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert calls == []


def test_deb822_source_gives_a_private_list_with_non_free(tmp_path: Path) -> None:
    proc, calls, state = run(tmp_path, sources={"sources.list.d/debian.sources": DEB822})
    line = (state / "sources.list").read_text().strip()
    assert line == f"deb [signed-by={KEYRING}] http://archive.invalid/debian bookworm main non-free"
    private = (
        f"-o Dir::Etc::sourcelist={state}/sources.list -o Dir::Etc::sourceparts=- "
        f"-o Dir::State::Lists={state}/lists -o Dir::Cache={state}/cache"
    )
    assert calls[0] == f"apt-get {private} update -qq"
    assert calls[1] == f"apt-get {private} install -y -qq --no-install-recommends {' '.join(PACKAGES)}"
    assert not any(" rhvoice " in c or c.endswith(" rhvoice") for c in calls)  # no CLI, no audio libs
    # the stub installed nothing: the script notices and fails, so the caller can warn
    assert proc.returncode == 1 and "still missing after install" in proc.stderr


def test_one_line_sources_list_with_options(tmp_path: Path) -> None:
    _, calls, state = run(tmp_path, sources={"sources.list": ONE_LINE}, installed=("librhvoice5",))
    line = (state / "sources.list").read_text().strip()
    # the keyring file does not exist on this machine: no signed-by option, apt's default keyrings
    assert line == "deb http://archive.invalid/debian bookworm main non-free"
    assert calls[1].endswith("--no-install-recommends librhvoice-core7 rhvoice-russian")


@pytest.mark.parametrize(
    "sources",
    [{}, {"sources.list": "deb http://archive.invalid/debian trixie main\n"}],
    ids=["no-sources", "other-release"],
)
def test_no_source_for_the_release_fails_clearly(tmp_path: Path, sources: dict[str, str]) -> None:
    proc, calls, _ = run(tmp_path, sources=sources)
    assert proc.returncode == 1 and "no deb source for bookworm" in proc.stderr
    assert calls == []


def test_not_root_fails_without_apt(tmp_path: Path) -> None:
    proc, calls, _ = run(tmp_path, sources={"sources.list.d/debian.sources": DEB822}, uid=1000)
    assert proc.returncode == 1 and "not root" in proc.stderr
    assert calls == []
