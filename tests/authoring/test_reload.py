"""A robot reloads when any file of its folder changes, and a broken version gets no new calls
while calls in progress keep the last good one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.authoring.conftest import CONFIG, known, make_robot, tone, write_json
from voiceplatform.audio import write_wav
from voiceplatform.config import RobotConfigError, RobotRegistry


def touch_later(path: Path) -> None:
    """Move the file's mtime on, as a save a little later would (no sleeping)."""
    stamp = path.stat().st_mtime + 5
    os.utime(path, (stamp, stamp))


def edit_dialog(folder: Path) -> None:
    text = (folder / "dialog.json").read_text().replace("Здравствуйте!", "Добрый день!")
    (folder / "dialog.json").write_text(text)


def edit_prompt(folder: Path) -> None:
    (folder / "prompt.txt").write_text("Другой промпт.\n")


def add_topic_prompt(folder: Path) -> None:
    (folder / "prompts").mkdir()
    (folder / "prompts" / "pets.txt").write_text("Питомцы.\n")


def add_track(folder: Path) -> None:
    (folder / "tracks").mkdir()
    write_wav(folder / "tracks" / "hello.wav", tone(0.1), 16000)


def edit_env(folder: Path) -> None:
    (folder / ".env").write_text("ROBOT_TTS__VOICE=other\n")


def add_greeting(folder: Path) -> None:
    write_wav(folder / "greeting.wav", tone(0.3), 16000)


@pytest.mark.parametrize(
    "edit",
    [edit_dialog, edit_prompt, add_topic_prompt, add_track, edit_env, add_greeting],
    ids=lambda f: f.__name__,
)
def test_any_file_of_the_folder_reloads_the_robot(robots: Path, edit) -> None:
    folder = make_robot(robots)
    registry = RobotRegistry(robots)
    first = registry.get("bot")
    assert registry.get("bot") is first  # nothing changed: the same object
    edit(folder)
    for path in folder.rglob("*"):
        if path.is_file():
            touch_later(path)  # same-second edits: the size or the mtime must differ
    second = registry.get("bot")
    assert second is not first
    assert registry.get("bot") is second


def test_a_dialog_edit_of_the_same_size_in_place_reloads(robots: Path) -> None:
    folder = make_robot(robots)
    registry = RobotRegistry(robots)
    first = registry.get("bot")
    dialog = folder / "dialog.json"
    dialog.write_text(dialog.read_text().replace("Здравствуйте!", "Здравствуйте?"))  # same length
    touch_later(dialog)
    assert registry.get("bot") is not first


def test_call_logs_written_into_the_folder_do_not_reload(robots: Path) -> None:
    folder = make_robot(robots)
    registry = RobotRegistry(robots)
    first = registry.get("bot")
    (folder / "logs").mkdir()
    (folder / "logs" / "call-1.json").write_text("{}")
    assert registry.get("bot") is first


def test_a_broken_edit_refuses_new_calls_and_keeps_calls_in_progress_on_the_last_good(robots: Path) -> None:
    folder = make_robot(robots)
    registry = RobotRegistry(robots)
    good = registry.get("bot", new_call=True)
    write_json(folder / "config.json", {**CONFIG, "asr": {"provider": "wisper"}})
    touch_later(folder / "config.json")
    with pytest.raises(RobotConfigError) as refused:
        registry.get("bot", new_call=True)
    assert refused.value.problems == [
        f"config.json: line 10: asr.provider: unknown provider 'wisper' (known: {known('asr')})"
    ]
    assert registry.get("bot") is good  # a turn of a call already in progress
    write_json(folder / "config.json", {**CONFIG, "greeting_text": "Привет"})  # fixed
    touch_later(folder / "config.json")
    fixed = registry.get("bot", new_call=True)
    assert fixed is not good and fixed.settings.greeting_text == "Привет"


def test_a_robot_broken_from_the_start(robots: Path) -> None:
    make_robot(robots, config={**CONFIG, "tts": {"provider": "espek"}})
    registry = RobotRegistry(robots)
    with pytest.raises(RobotConfigError, match=r"tts\.provider: unknown provider 'espek'"):
        registry.get("bot", new_call=True)
    # a worker asked for a turn of an admitted call still gets what loaded: its stages report the rest
    assert registry.get("bot").settings.tts.provider == "espek"


def test_a_folder_that_does_not_load_is_refused_everywhere(robots: Path) -> None:
    folder = make_robot(robots)
    (folder / "config.json").write_text("{ not json")
    registry = RobotRegistry(robots)
    for new_call in (True, False):
        with pytest.raises(RobotConfigError, match=r"config\.json is not valid JSON"):
            registry.get("bot", new_call=new_call)


def test_load_all_checks_every_robot_at_once(robots: Path) -> None:
    """What a gateway does at start, so a robot's problems are in the log before its first call."""
    make_robot(robots, "good")
    make_robot(robots, "bad", config={**CONFIG, "llm": {"provider": "chatgpt"}})
    registry = RobotRegistry(robots)
    assert registry.load_all() == ["bad"]
    assert registry.get("good", new_call=True).name == "good"
