"""`vp new robot NAME --from TEMPLATE`: a copy made its own, never over an existing robot, checked."""

from __future__ import annotations

import json
from pathlib import Path

from tests.authoring.conftest import CONFIG, make_robot, tone
from voiceplatform.audio import write_wav
from voiceplatform.cli.main import main


def test_new_robot_from_a_template(robots: Path, capsys) -> None:
    template = make_robot(
        robots, "shop", config={**CONFIG, "name": "shop", "phone_numbers": ["7001"], "ws_port": 5200}
    )
    (template / ".env").write_text("YANDEX_API_KEY=secret-of-the-template\n")
    (template / "logs").mkdir()
    (template / "logs" / "call-1.json").write_text("{}")
    write_wav(template / "greeting.wav", tone(0.2), 16000)

    assert main(["new", "robot", "bakery", "--from", "shop"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "created robots/bakery from robots/shop (name, phone_numbers emptied, ws_port 5201)"
    assert out[-1].startswith("robots/bakery: OK (")
    new = robots / "bakery"
    config = json.loads((new / "config.json").read_text())
    assert (config["name"], config["phone_numbers"], config["ws_port"]) == ("bakery", [], 5201)
    assert (new / "dialog.json").read_bytes() == (template / "dialog.json").read_bytes()
    assert (new / "greeting.wav").is_file()
    assert not (new / ".env").exists() and not (new / "logs").exists()  # keys and call logs stay


def test_new_robot_never_overwrites(robots: Path, capsys) -> None:
    make_robot(robots, "shop")
    existing = make_robot(robots, "bakery", config={**CONFIG, "greeting_text": "Свой"})
    before = (existing / "config.json").read_text()
    assert main(["new", "robot", "bakery", "--from", "shop"]) == 1
    assert capsys.readouterr().err.strip() == "vp new robot: robots/bakery exists; not overwriting it"
    assert (existing / "config.json").read_text() == before


def test_new_robot_from_a_broken_template_reports_its_problems(robots: Path, capsys) -> None:
    make_robot(robots, "shop", config={**CONFIG, "tts": {"provider": "espek"}})
    assert main(["new", "robot", "robots/bakery", "--from", "robots/shop"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("robots/bakery/config.json: line ") and "unknown provider 'espek'" in out[-1]


def test_new_robot_refuses_a_bad_name_or_a_missing_template(robots: Path, capsys) -> None:
    make_robot(robots, "shop")
    assert main(["new", "robot", "bad name", "--from", "shop"]) == 2
    assert "is not a robot name" in capsys.readouterr().err
    assert main(["new", "robot", "bakery", "--from", "nothing"]) == 2
    assert capsys.readouterr().err.strip() == "vp new robot: no robot at robots/nothing (no config.json)"
    assert not (robots / "bakery").exists()
