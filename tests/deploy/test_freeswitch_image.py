"""The FreeSWITCH image's loader configuration: mod_audio_stream is installed without an rpath, so the
build must put FreeSWITCH's library folder in ld.so's configuration before `runtime-deps.sh check`
runs (otherwise `ldd` reports `libfreeswitch.so.1 => not found` and the build stops). No Docker engine
here: the Dockerfile is read instruction by instruction, and the configuration file and the check
are run against a library and a module built like that (gcc, ldconfig with a private cache)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FS_DIR = REPO / "deploy" / "compose" / "freeswitch"
LD_CONF = FS_DIR / "ld.so.conf"
FS_LIBDIR = "/usr/local/freeswitch/lib"


def _instructions(stage: str) -> list[str]:
    """The instructions of one stage (``build`` or ``runtime``), continuation lines joined."""
    text = (FS_DIR / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    names = [re.search(r" AS (\w+)$", lines[i]) for i in starts]
    assert [n[1] if n else None for n in names] == ["build", "runtime"]
    index = ["build", "runtime"].index(stage)
    end = starts[index + 1] if index + 1 < len(starts) else len(lines)
    return lines[starts[index] : end]


def _first(lines: list[str], pattern: str, after: int = -1) -> int:
    found = [i for i, line in enumerate(lines) if i > after and re.search(pattern, line)]
    assert found, pattern
    return found[0]


def _conf_dirs() -> list[str]:
    return [
        line.strip() for line in LD_CONF.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def test_ld_conf_names_the_folder_freeswitch_installs_its_library_into() -> None:
    assert _conf_dirs() == [FS_LIBDIR]
    dockerfile = (FS_DIR / "Dockerfile").read_text()
    # the FreeSWITCH the module is built against (pkg-config's libdir) is the one in the loader's path
    assert f"PKG_CONFIG_PATH={FS_LIBDIR}/pkgconfig" in dockerfile


def test_build_stage_configures_the_loader_before_it_lists_runtime_packages() -> None:
    lines = _instructions("build")
    module = _first(lines, r"^RUN .*mod_audio_stream\.git")
    copy = _first(lines, r"^COPY ld\.so\.conf /etc/ld\.so\.conf\.d/\S+\.conf$")
    ldconfig = _first(lines, r"^RUN (.* && )?ldconfig( |$)", after=copy)
    packages = _first(lines, r"runtime-deps\.sh packages")
    assert module < copy < ldconfig < packages
    # and the file travels to the runtime stage with FreeSWITCH's tree
    assert re.search(
        r"cp /etc/ld\.so\.conf\.d/freeswitch\.conf /staging/etc/ld\.so\.conf\.d/", lines[packages]
    )


def test_runtime_stage_runs_ldconfig_after_the_copy_and_before_the_check() -> None:
    lines = _instructions("runtime")
    copy = _first(lines, r"^COPY --from=build /staging/ /$")
    check = _first(lines, r"runtime-deps\.sh check")
    assert copy < check
    run = lines[check]
    assert run.index("ldconfig") < run.index("runtime-deps.sh check")
    checked = run[run.index("runtime-deps.sh check") :]
    assert "/usr/local/freeswitch/mod/*.so" in checked and "/usr/local/freeswitch/lib/*.so*" in checked


def _build_module_without_rpath(tmp_path: Path) -> tuple[Path, Path]:
    """A libfreeswitch stand-in with a soname in ``lib/`` and a module linked to it, no rpath: what
    CMake's install of mod_audio_stream leaves."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "core.c").write_text("int vp_fs_core(void) { return 1; }\n")
    (tmp_path / "mod.c").write_text("int vp_fs_core(void);\nint vp_mod_load(void) { return vp_fs_core(); }\n")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libvpfscore.so.1",
            "-o",
            str(lib / "libvpfscore.so.1"),
            "core.c",
        ],
        cwd=tmp_path,
        check=True,
    )
    (lib / "libvpfscore.so").symlink_to("libvpfscore.so.1")
    module = tmp_path / "mod_probe.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(module), "mod.c", f"-L{lib}", "-lvpfscore"],
        cwd=tmp_path,
        check=True,
    )
    return lib, module


def test_a_module_without_rpath_fails_the_check_until_its_folder_is_configured(tmp_path: Path) -> None:
    if not (shutil.which("gcc") and shutil.which("ldd") and shutil.which("ldconfig")):
        pytest.skip("needs gcc, ldd and ldconfig")
    lib, module = _build_module_without_rpath(tmp_path)
    script = str(FS_DIR / "runtime-deps.sh")
    missing = subprocess.run(["sh", script, "check", str(module)], capture_output=True, text=True)
    assert missing.returncode == 1 and "libvpfscore.so.1 => not found" in missing.stderr
    # the repository's file, with its folder swapped for this one, is read by ldconfig as configuration
    conf = tmp_path / "freeswitch.conf"
    conf.write_text(LD_CONF.read_text().replace(FS_LIBDIR, str(lib)))
    cache = tmp_path / "ld.so.cache"
    subprocess.run(["ldconfig", "-f", str(conf), "-C", str(cache)], check=True, capture_output=True)
    listed = subprocess.run(["ldconfig", "-C", str(cache), "-p"], capture_output=True, text=True, check=True)
    assert f"libvpfscore.so.1 (libc6,x86-64) => {lib}/libvpfscore.so.1" in listed.stdout.replace("\t", "")
    # with the folder known to the loader, the same check passes
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(lib)}
    found = subprocess.run(["sh", script, "check", str(module)], capture_output=True, text=True, env=env)
    assert found.returncode == 0, found.stderr


def test_image_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck (apt-get install shellcheck)")
    scripts = [FS_DIR / name for name in ("runtime-deps.sh", "docker-entrypoint.sh", "healthcheck.sh")]
    result = subprocess.run([shellcheck, "-s", "sh", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
