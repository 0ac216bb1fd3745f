"""`vp check`: one robot folder per mistake, each reported on one line with its file and line, and a
non-zero exit; a good robot gets one OK line and exit 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.authoring.conftest import CONFIG, DIALOG, known, make_robot, tone, write_json
from voiceplatform.audio import write_wav
from voiceplatform.cli.main import main


def check(capsys: pytest.CaptureFixture[str], *targets: str) -> tuple[int, list[str]]:
    code = main(["check", *targets])
    return code, capsys.readouterr().out.splitlines()


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of ``path`` containing ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_good_robot_is_ok_by_folder_by_name_and_by_any_path(robots, capsys, monkeypatch) -> None:
    folder = make_robot(robots)
    assert check(capsys, "robots/bot") == (
        0,
        ["robots/bot: OK (mode pipeline; asr whisper; llm script; tts espeak; vad energy)"],
    )
    code, out = check(capsys, "bot")  # a bare name: in the robots folder (ROBOTS_DIR, else robots/)
    assert code == 0 and out[0].startswith("robots/bot: OK")
    code, out = check(capsys, str(folder.resolve()))
    assert code == 0 and out[0].startswith("robots/bot: OK")


def test_wrong_mode(robots, capsys) -> None:
    folder = make_robot(robots, config={**CONFIG, "mode": "pipline"})
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "config.json", '"mode"')
    assert code == 1
    assert out == [f"robots/bot/config.json: line {n}: mode: Input should be {_modes()}"]


def _modes() -> str:
    from typing import get_args

    from voiceplatform.config.robot import RobotSettings

    names = [f"'{m}'" for m in get_args(RobotSettings.model_fields["mode"].annotation)]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def test_unknown_provider(robots, capsys) -> None:
    config = {**CONFIG, "asr": {"provider": "wisper"}}
    folder = make_robot(robots, config=config)
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "config.json", '"wisper"')
    assert code == 1
    assert out == [
        f"robots/bot/config.json: line {n}: asr.provider: unknown provider 'wisper' (known: {known('asr')})"
    ]


def test_unknown_fallback_provider_and_options_for_an_unknown_provider(robots, capsys) -> None:
    config = {**CONFIG, "tts": {"provider": "espeak", "fallback": ["festivall"], "providers": {"yandx": {}}}}
    folder = make_robot(robots, config=config)
    code, out = check(capsys, "robots/bot")
    cfg = folder / "config.json"
    at = f"robots/bot/config.json: line {line_of(cfg, 'festivall')}"
    assert code == 1
    assert out == [
        f"{at}: tts.fallback: unknown provider 'festivall' (known: {known('tts')})",
        f"robots/bot/config.json: line {line_of(cfg, 'yandx')}: tts.providers.yandx: "
        "options for an unknown provider",
    ]


def test_bad_provider_option(robots, capsys) -> None:
    config = {
        **CONFIG,
        "llm": {"provider": "gemini", "providers": {"gemini": {"modles": ["gemini-2.5-flash"]}}},
    }
    folder = make_robot(robots, config=config)
    (folder / ".env").write_text("GEMINI_API_KEY=test-key-not-printed\n")
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "config.json", '"modles"')
    assert code == 1
    assert out == [
        f"robots/bot/config.json: line {n}: llm provider 'gemini': llm.providers.gemini.modles: "
        "Extra inputs are not permitted"
    ]


def test_missing_key_of_a_cloud_provider_and_the_key_is_never_printed(robots, capsys) -> None:
    config = {**CONFIG, "llm": {"provider": "yandex", "providers": {"yandex": {"folder_id": "b1g-folder"}}}}
    folder = make_robot(robots, config=config)
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "config.json", '"yandex"')
    assert code == 1
    assert out == [
        f"robots/bot/config.json: line {n}: llm provider 'yandex': needs YANDEX_API_KEY or YANDEX_IAM_TOKEN"
    ]
    (folder / ".env").write_text("YANDEX_API_KEY=AQVN-secret-value-123\n")
    code, out = check(capsys, "robots/bot")
    assert code == 0 and "AQVN-secret-value-123" not in "\n".join(out)


def test_dialog_json_that_is_not_json(robots, capsys) -> None:
    folder = make_robot(robots)
    (folder / "dialog.json").write_text('{\n  "start": "main",\n  "states": {,\n}\n')
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == [
        "robots/bot/dialog.json: line 3: not valid JSON: Expecting property name enclosed in double quotes"
    ]


def test_dialog_json_with_a_bad_intent_points_at_its_line(robots, capsys) -> None:
    dialog: dict[str, Any] = json.loads(json.dumps(DIALOG))
    dialog["states"]["main"]["intents"].append({"keywords": ["доставка"], "reply": "", "next": "nowhere"})
    folder = make_robot(robots, dialog=dialog)
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "dialog.json", '"reply": ""')
    assert code == 1
    assert out == [f"robots/bot/dialog.json: line {n}: states.main.intents[1].reply: must be non-empty text"]


def test_missing_dialog_of_a_script_robot(robots, capsys) -> None:
    make_robot(robots, dialog=None)
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == [
        "robots/bot/config.json: llm.provider is 'script' but dialog.json is missing"
    ]  # no line: not a value


def test_missing_prompt_of_a_chat_model(robots, capsys) -> None:
    folder = make_robot(
        robots, config={**CONFIG, "llm": {"provider": "openai", "base_url": "http://127.0.0.1:9"}}
    )
    (folder / "prompt.txt").unlink()
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == ["robots/bot/prompt.txt: missing: the model needs its system prompt"]


def test_topic_prompt_files(robots, capsys) -> None:
    router = {"prompts": {"pets": "prompts/pets.txt"}, "rules": [{"prompt": "pets", "keywords": ["собака"]}]}
    folder = make_robot(robots, config={**CONFIG, "router": router})
    (folder / "prompts").mkdir()
    (folder / "prompts" / "pets.txt").write_text("  \n")
    (folder / "prompts" / "kids.txt").write_text("Дети.\n")
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == [
        "robots/bot/prompts/pets.txt: empty (prompt 'pets' of router.prompts)",
        "robots/bot/prompts/kids.txt: not named in router.prompts of config.json, never used",
    ]


def test_bad_router_rules(robots, capsys) -> None:
    router = {"rules": [{"prompt": "pets", "keywords": ["собака"]}]}
    folder = make_robot(robots, config={**CONFIG, "router": router})
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "config.json", '"router"')
    assert code == 1
    assert out == [f"robots/bot/config.json: line {n}: router: router rules name unknown prompts: pets"]

    router = {"prompts": {"pets": "prompts/pets.txt"}, "rules": [{"prompt": "pets", "keywords": ["!!!"]}]}
    write_json(folder / "config.json", {**CONFIG, "router": router})
    (folder / "prompts").mkdir()
    (folder / "prompts" / "pets.txt").write_text("Питомцы.\n")
    code, out = check(capsys, "robots/bot")
    n = line_of(folder / "config.json", '"!!!"')
    assert code == 1
    assert out == [f"robots/bot/config.json: line {n}: router.rules.0.keywords.0: '!!!' has no word"]


def test_unreadable_track(robots, capsys) -> None:
    folder = make_robot(robots)
    (folder / "tracks").mkdir()
    write_wav(folder / "tracks" / "ok.wav", tone(0.1), 16000)
    (folder / "tracks" / "bad.wav").write_bytes(b"ID3\x04\x00" + bytes(200))  # an MP3 named .wav
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == ["robots/bot/tracks/bad.wav: not a 16-bit PCM WAV: file does not start with RIFF id"]


def test_greeting_wav_against_greeting_text(robots, capsys) -> None:
    folder = make_robot(robots, config={**CONFIG, "greeting_text": "Добрый день!"})
    write_wav(folder / "greeting.wav", tone(0.2), 16000)
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == [
        "robots/bot/greeting.wav: its words are unknown while greeting_text is 'Добрый день!': write the "
        "words it says into greeting.wav.txt, or delete it to have greeting_text spoken"
    ]
    # copied from another robot: its words file says what it says, which is no longer the greeting
    (folder / "greeting.wav.txt").write_text("Здравствуйте! Чем могу помочь?\n")
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == [
        "robots/bot/greeting.wav: says 'Здравствуйте! Чем могу помочь?' (greeting.wav.txt) but "
        "greeting_text is 'Добрый день!': record it again (and its greeting.wav.txt), or delete it to "
        "have greeting_text spoken"
    ]
    (folder / "greeting.wav.txt").write_text("Добрый  день!\n")  # the same words
    assert check(capsys, "robots/bot")[0] == 0


def test_fallback_wav_needs_its_words(robots, capsys) -> None:
    folder = make_robot(robots)
    write_wav(folder / "fallback.wav", tone(0.2), 16000)
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == ["robots/bot/fallback.wav: set fallback_text in config.json to the words it says"]


def test_a_folder_without_a_robot_and_every_robot_at_once(robots, capsys) -> None:
    make_robot(robots, "good")
    make_robot(robots, "bad", config={**CONFIG, "mode": "nope"})
    code, out = check(capsys, "robots/nothing")
    assert (code, out) == (1, ["robots/nothing: no robot here (no config.json)"])
    code, out = check(capsys)  # no argument: every robot of the robots folder
    assert code == 1
    assert [line.split(":")[0] for line in out] == ["robots/bad/config.json", "robots/good"]


def test_the_shipped_robots_pass_but_for_missing_keys() -> None:
    from voiceplatform.config.robot_check import check_robot

    root = Path(__file__).resolve().parents[2] / "robots"
    for folder in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        assert check_robot(folder, author=False).lines() == [], folder.name


def test_llm_script_robot_is_checked_against_its_manifest(robots, capsys) -> None:
    config = {**CONFIG, "mode": "llm_script"}
    folder = make_robot(robots, config=config, dialog=None)  # no dialog.json: the tracks answer
    (folder / "tracks").mkdir()
    write_wav(folder / "tracks" / "hours.wav", tone(0.5), 16000)
    track = {"id": "hours", "file": "hours.wav", "text": "Мы работаем с девяти.", "examples": ["когда"]}
    write_json(folder / "tracks" / "manifest.json", {"fallthrough": "tts", "tracks": [track]})
    code, out = check(capsys, "robots/bot")
    assert code == 0, out
    assert "mode llm_script" in out[0] and "llm none" in out[0] and "1 tracks" in out[0]

    # a manifest naming a recording that is not there: a problem line, and services refuse the robot
    missing = {"id": "address", "file": "address.wav", "text": "Улица Ленина, десять.", "examples": ["где"]}
    write_json(folder / "tracks" / "manifest.json", {"fallthrough": "tts", "tracks": [track, missing]})
    code, out = check(capsys, "robots/bot")
    assert code == 1
    assert out == ["robots/bot/tracks/manifest.json: track 'address': tracks/address.wav: file not found"]
