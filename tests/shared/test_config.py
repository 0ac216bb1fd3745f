import json

import pytest

from voiceplatform.config import RobotConfigError, RobotRegistry, load_robot


def make_robot(root, name="bot", config=None, env="", files=None):
    folder = root / "robots" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        config if isinstance(config, str) else json.dumps(config or {"llm": {"provider": "openai"}}),
        encoding="utf-8",
    )
    (folder / "prompt.txt").write_text("Ты вежливый помощник.", encoding="utf-8")
    if env:
        (folder / ".env").write_text(env, encoding="utf-8")
    for rel, text in (files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    return folder


def test_priority_chain_config_json_over_robot_env_over_process_env_over_root_env_over_defaults(
    tmp_path, monkeypatch
):
    (tmp_path / ".env").write_text(
        "ROBOT_TTS__VOICE=root\nROBOT_TTS__SAMPLE_RATE=8000\nROBOT_VAD__SILENCE_FRAMES=40\nYANDEX_API_KEY=root-key\n"
    )
    monkeypatch.setenv("ROBOT_VAD__SILENCE_FRAMES", "30")
    monkeypatch.setenv("ROBOT_TTS__SAMPLE_RATE", "22050")
    folder = make_robot(
        tmp_path,
        config={"llm": {"provider": "openai"}, "tts": {"voice": "config"}},
        env="ROBOT_TTS__VOICE=robot-env\nROBOT_TTS__SAMPLE_RATE=24000\nYANDEX_API_KEY=robot-key\n",
    )
    robot = load_robot(folder)
    s = robot.settings
    assert s.tts.voice == "config"  # config.json wins
    assert s.tts.sample_rate == 24000  # robot .env beats process env and root .env
    assert s.vad.silence_frames == 30  # process env beats root .env
    assert s.vad.min_speech_frames == 5  # default
    assert robot.secret("YANDEX_API_KEY") == "robot-key"
    assert robot.system_prompt == "Ты вежливый помощник."


def test_broken_json_gives_a_clear_error(tmp_path):
    folder = make_robot(tmp_path, config='{"mode": "pipeline",')
    with pytest.raises(RobotConfigError, match="not valid JSON"):
        load_robot(folder)


def test_every_problem_is_listed_with_its_path(tmp_path):
    folder = make_robot(
        tmp_path, config={"mode": "karaoke", "vad": {"silence_frames": -1}, "tts": {"sampel_rate": 8000}}
    )
    with pytest.raises(RobotConfigError) as err:
        load_robot(folder)
    text = str(err.value)
    assert "mode" in text and "vad.silence_frames" in text and "tts.sampel_rate" in text


def test_router_rules_must_name_known_prompts_and_files_must_exist(tmp_path):
    folder = make_robot(
        tmp_path,
        config={
            "llm": {"provider": "openai"},
            "router": {
                "prompts": {"pets": "prompts/pets.txt"},
                "rules": [{"prompt": "pets", "keywords": ["собака"]}],
            },
        },
    )
    with pytest.raises(RobotConfigError, match=r"prompts/pets\.txt"):
        load_robot(folder)
    (folder / "prompts").mkdir()
    (folder / "prompts" / "pets.txt").write_text("Товары для собак")
    assert load_robot(folder).prompt_text("pets") == "Товары для собак"


def test_script_provider_needs_its_dialog_file(tmp_path):
    folder = make_robot(tmp_path, config={"llm": {"provider": "script"}})
    with pytest.raises(RobotConfigError, match=r"dialog\.json"):
        load_robot(folder)


def test_registry_rejects_path_tricks_and_reloads_on_change(tmp_path):
    make_robot(tmp_path, config={"llm": {"provider": "openai"}, "greeting_text": "A"})
    registry = RobotRegistry(tmp_path / "robots")
    with pytest.raises(RobotConfigError):
        registry.get("../etc")
    assert registry.get("bot").settings.greeting_text == "A"
    cfg = tmp_path / "robots" / "bot" / "config.json"
    cfg.write_text(json.dumps({"llm": {"provider": "openai"}, "greeting_text": "B"}))
    import os

    os.utime(cfg, (cfg.stat().st_atime, cfg.stat().st_mtime + 5))
    assert registry.get("bot").settings.greeting_text == "B"
    assert registry.names() == ["bot"]
