"""Every robot folder loads, and its dialog.json is a valid script for the LLM script engine."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from voiceplatform.config import load_robot
from voiceplatform.config.tracks import check_tracks
from vp_llm.script_engine import DialogScript, DialogScriptError
from vp_router.routing import PromptRoutes

ROBOTS = Path(__file__).resolve().parents[2] / "robots"
# "_unknown" holds the call logs of calls whose robot is not known (the recorder writes it): no robot
FOLDERS = (
    sorted(p for p in ROBOTS.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if ROBOTS.is_dir()
    else []
)


def test_there_are_robots() -> None:
    names = {p.name for p in FOLDERS}
    assert {"pipeline_russian", "topic_prompts_russian"} <= names


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_robot_loads_and_its_script_is_valid(folder: Path) -> None:
    robot = load_robot(folder)
    assert robot.system_prompt, "prompt.txt must not be empty"
    for prompt_id, text in robot.prompts.items():
        assert text.strip(), f"prompt {prompt_id} is empty"
    uses_script = robot.settings.mode == "pipeline" and robot.settings.llm.provider == "script"
    if robot.settings.mode == "llm_script":
        assert check_tracks(folder) == []  # its recordings and their manifest
    if uses_script or robot.dialog_path.is_file():
        script = DialogScript.load(robot.dialog_path)  # validates start, every next, every intent
        assert script.start in script.nodes
        raw = json.loads(robot.dialog_path.read_text(encoding="utf-8"))
        prompts_used = {
            it["prompt"]
            for node in raw["states"].values()
            for it in node.get("intents", []) + raw.get("global", [])
            if "prompt" in it
        } | {p for node in raw["states"].values() for p in node.get("fallback_by_prompt", {})}
        assert prompts_used <= set(robot.prompts), "script names prompts the robot does not have"
        # a goodbye ends the call in every robot
        assert any(it.end_call for it in (*script.global_intents, *script.builtins.intents))
    PromptRoutes(robot)  # router rules compile


# a robot without greeting.wav has its greeting_text spoken (TTS, or the realtime model)
@pytest.mark.parametrize(
    "folder", [f for f in FOLDERS if (f / "greeting.wav").is_file()], ids=lambda p: p.name
)
def test_greeting_wav_is_16k_mono_pcm16(folder: Path) -> None:
    wav_path = folder / "greeting.wav"
    with wave.open(str(wav_path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.getnframes() > 16000 * 0.5


def test_script_validation_reports_every_problem() -> None:
    bad = {
        "start": "nowhere",
        "states": {
            "main": {
                "intents": [
                    {"keywords": ["да"], "reply": "Ок.", "next": "missing"},
                    {"keywords": [], "reply": "x"},
                ],
                "fallback": "",
            }
        },
        "global": [{"keywords": ["пока"], "reply": "Пока.", "next": "gone"}],
    }
    with pytest.raises(DialogScriptError) as err:
        DialogScript.from_dict(bad)
    text = str(err.value)
    for expected in ("start", "'missing'", "keywords", "fallback", "'gone'"):
        assert expected in text


def test_script_topics_and_states() -> None:
    robot = load_robot(ROBOTS / "topic_prompts_russian")
    script = DialogScript.load(robot.dialog_path)
    pets = script.step("main", "pets", "а сколько стоит корм?")
    earning = script.step("main", "earning", "а сколько стоит?")
    assert "корм" in pets.reply.lower()
    assert "курс" in earning.reply.lower()
    assert script.step("main", "children", "ну не знаю").reply.startswith("Для детей")
    bye = script.step("main", "default", "До свидания!")
    assert bye.end_call
    shop = DialogScript.load(load_robot(ROBOTS / "pipeline_russian").dialog_path)
    first = shop.step("main", "default", "У меня собака")
    assert first.state == "pets"
    assert shop.step(first.state, "default", "собака, лабрадор").state == "order"
    assert shop.step("order", "default", "да, давайте").reply.startswith("Отлично")
    assert shop.step("main", "default", "абракадабра").reply.startswith("Извините")
