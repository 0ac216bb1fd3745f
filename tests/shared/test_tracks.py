"""tracks/manifest.json of an llm_script robot: loading, every problem as one clear line, the audio."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceplatform.audio import pcm_to_array, write_wav
from voiceplatform.config import RobotConfigError, load_robot
from voiceplatform.config.tracks import TracksError, check_tracks, load_tracks, track_pcm

REPO_ROBOTS = Path(__file__).resolve().parents[2] / "robots"


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def track(track_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": track_id,
        "file": f"{track_id}.wav",
        "text": f"Это запись {track_id}.",
        "when": f"о {track_id}",
        "examples": [f"расскажите о {track_id}"],
        **extra,
    }


def robot(tmp_path: Path, tracks: list[dict[str, Any]], wavs: bool = True, **manifest: Any) -> Path:
    folder = tmp_path / "bot"
    (folder / "tracks").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"mode": "llm_script"}), encoding="utf-8")
    data = {"tracks": tracks, **manifest}
    (folder / "tracks" / "manifest.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    if wavs:
        for t in tracks:
            write_wav(folder / "tracks" / t["file"], tone(0.5, 16000), 16000)
    return folder


def test_a_good_manifest_loads_and_has_no_problems(tmp_path: Path) -> None:
    folder = robot(tmp_path, [track("hours"), track("bye", end_call=True)], fallthrough="bye")
    assert check_tracks(folder) == []
    tracks = load_tracks(folder)
    assert [t.id for t in tracks.manifest.tracks] == ["hours", "bye"]
    assert tracks.manifest.fallthrough_track is not None and tracks.manifest.fallthrough_track.end_call
    assert tracks.path_of(tracks.manifest.tracks[0]) == folder / "tracks" / "hours.wav"
    assert load_tracks(folder) is tracks  # cached while the manifest is unchanged


def test_the_repo_robot_is_clean_and_loads() -> None:
    folder = REPO_ROBOTS / "llm_script_russian"
    assert check_tracks(folder) == []
    assert load_robot(folder).settings.mode == "llm_script"
    assert len(load_tracks(folder).manifest.tracks) >= 6


def test_every_problem_is_one_line_naming_the_track(tmp_path: Path) -> None:
    tracks = [
        track("hours"),
        track("hours"),  # duplicate
        track("address", text="  "),  # empty text
        track("price"),  # its file goes missing
        track("stereo"),
        track("eight_bit"),
        track("junk"),
        track("mute", when="", examples=[]),
        track("escape", file="../config.json"),
    ]
    folder = robot(tmp_path, tracks, fallthrough="operator")
    (folder / "tracks" / "price.wav").unlink()
    with wave.open(str(folder / "tracks" / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 3200)
    with wave.open(str(folder / "tracks" / "eight_bit.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(b"\x80" * 1600)
    (folder / "tracks" / "junk.wav").write_bytes(b"ID3 this is an mp3 really")

    problems = check_tracks(folder)
    text = "\n".join(problems)
    assert "track 'hours': duplicate id" in problems
    assert any(p.startswith("track 'address': empty text") for p in problems)
    assert "track 'price': tracks/price.wav: file not found" in problems
    assert "track 'stereo': tracks/stereo.wav: 2 channels; use mono" in problems
    assert "track 'eight_bit': tracks/eight_bit.wav: 8-bit samples; use 16-bit PCM" in problems
    assert any(p.startswith("track 'junk': tracks/junk.wav: not a readable WAV file") for p in problems)
    assert any(p.startswith("track 'mute': no 'when', no examples and no dtmf") for p in problems)
    assert any(p.startswith("track 'escape': file '../config.json' is outside tracks/") for p in problems)
    assert "fallthrough 'operator' is neither 'tts' nor a track id" in text
    assert len(problems) == 9, problems


def test_keys_and_no_input_choose_tracks_without_words(tmp_path: Path) -> None:
    tracks = [
        track("hours", dtmf="1"),
        track("operator", when="", examples=[], dtmf=["0", "0#"]),  # chosen by its keys alone: fine
        track("silence", when="", examples=[]),  # played on silence alone: fine
        track("price", dtmf=["5", "1"]),  # 1: the key of hours
    ]
    folder = robot(tmp_path, tracks, no_input="silence")
    assert check_tracks(folder) == ["track 'price': dtmf '1' already chooses track 'hours'"]
    (folder / "tracks" / "manifest.json").write_text(
        json.dumps({"tracks": tracks[:3], "no_input": "quiet"}), encoding="utf-8"
    )
    assert check_tracks(folder) == [
        "track 'silence': no 'when', no examples and no dtmf, it can never be chosen",
        "tracks/manifest.json: no_input 'quiet' is not a track id",
    ]
    (folder / "tracks" / "manifest.json").write_text(
        json.dumps({"tracks": [track("a", dtmf="1x")]}), encoding="utf-8"
    )
    assert any("tracks.0.dtmf" in p for p in check_tracks(folder))
    (folder / "tracks" / "manifest.json").write_text(
        json.dumps({"tracks": tracks[:3], "no_input": "silence"}), encoding="utf-8"
    )
    manifest = load_tracks(folder).manifest
    assert manifest.by_dtmf("0#").id == "operator" and manifest.by_dtmf("9") is None  # type: ignore[union-attr]
    assert manifest.by_dtmf("") is None


def test_manifest_level_problems(tmp_path: Path) -> None:
    folder = robot(tmp_path, [track("hours")])
    manifest = folder / "tracks" / "manifest.json"
    manifest.write_text("{not json", encoding="utf-8")
    [problem] = check_tracks(folder)
    assert problem.startswith("tracks/manifest.json is not valid JSON")
    manifest.write_text(json.dumps({"tracks": [{"id": "x y", "file": "x.wav"}], "extra": 1}), "utf-8")
    problems = check_tracks(folder)
    assert any("tracks.0.id" in p for p in problems)
    assert any("tracks.0.text" in p and "required" in p.lower() for p in problems)
    assert any(p.startswith("tracks/manifest.json extra") for p in problems)
    manifest.unlink()
    assert check_tracks(folder) == ["tracks/manifest.json is missing"]


def test_load_raises_the_manifest_problems_and_reloads_a_fixed_manifest(tmp_path: Path) -> None:
    folder = robot(tmp_path, [track("hours")], fallthrough="nobody")
    with pytest.raises(TracksError) as exc:
        load_tracks(folder)
    assert "fallthrough 'nobody'" in str(exc.value) and len(exc.value.problems) == 1
    manifest = folder / "tracks" / "manifest.json"
    manifest.write_text(json.dumps({"tracks": [track("hours")], "fallthrough": "hours"}), "utf-8")
    os.utime(manifest, (1, 1))  # a new version even within the file system's time resolution
    assert load_tracks(folder).manifest.fallthrough == "hours"
    # the services load only the manifest: a broken recording is found when it is played
    (folder / "tracks" / "hours.wav").unlink()
    os.utime(manifest, (2, 2))
    assert load_tracks(folder).manifest.tracks[0].id == "hours"


def test_llm_script_robot_needs_a_manifest_not_a_dialog_script(tmp_path: Path) -> None:
    folder = robot(tmp_path, [track("hours")])
    assert load_robot(folder).settings.mode == "llm_script"  # no dialog.json asked for
    (folder / "tracks" / "manifest.json").unlink()
    with pytest.raises(RobotConfigError) as exc:
        load_robot(folder)
    assert exc.value.problems == ["mode is 'llm_script' but tracks/manifest.json is missing"]


def test_track_audio_at_the_call_rate_is_decoded_once(tmp_path: Path) -> None:
    folder = robot(tmp_path, [track("hours")], wavs=False)
    path = folder / "tracks" / "hours.wav"
    write_wav(path, tone(1.0, 24000), 24000)
    phone = track_pcm(path, 8000)
    web = track_pcm(path, 16000)
    assert pcm_to_array(phone).size == 8000 and pcm_to_array(web).size == 16000
    assert track_pcm(path, 8000) is phone
    write_wav(path, tone(0.5, 16000), 16000)
    os.utime(path, (5, 5))
    assert pcm_to_array(track_pcm(path, 8000)).size == 4000  # a replaced recording is read again
    path.write_bytes(b"not a wav")
    os.utime(path, (6, 6))
    with pytest.raises(ValueError, match="not a readable WAV"):
        track_pcm(path, 8000)
