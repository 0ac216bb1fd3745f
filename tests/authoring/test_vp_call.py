"""`vp call` exits non-zero with the cause when a turn fails or nothing answers, calls exactly the
robot folder it is given, and says in one line what is wrong with a robot name or an audio file."""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.authoring.conftest import CONFIG, known, make_robot, tone
from voiceplatform.audio import write_wav
from voiceplatform.cli.call import run_call
from voiceplatform.cli.up import ROBOTS_DIR_FILE


def serve(robots: Path) -> None:
    """As `vp up --robots <robots>` leaves it for `vp call` in its work dir (.vp)."""
    Path(".vp").mkdir(exist_ok=True)
    (Path(".vp") / ROBOTS_DIR_FILE).write_text(f"{robots.resolve()}\n")


def args(robot: str, wav: Path, url: str = "ws://127.0.0.1:9/ws") -> argparse.Namespace:
    return argparse.Namespace(
        robot=robot, wav=wav, url=url, out=wav.with_suffix(".reply.wav"), json=False, tail_s=3.0, phone=False
    )


def caller(path: Path, speech: bool) -> Path:
    samples = np.concatenate([tone(0.8), np.zeros(8000, np.int16)]) if speech else np.zeros(16000, np.int16)
    write_wav(path, samples, 16000)
    return path


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("vp call")]


async def test_a_call_nobody_answers_exits_1(gateway_factory, greeting_robot, tmp_path, capsys) -> None:
    serve(greeting_robot.parent)
    async with gateway_factory() as gw:
        code = await asyncio.to_thread(
            run_call, args("robots/bot", caller(tmp_path / "in.wav", True), gw.ws_url)
        )
    assert code == 1
    assert stderr_lines(capsys) == ["vp call: no reply: the caller spoke 1 time(s), the robot answered none"]


async def test_a_failed_stage_exits_1_with_its_kind_and_detail(
    gateway_factory, greeting_robot, tmp_path, capsys
) -> None:
    serve(greeting_robot.parent)
    detail = "no asr provider could be built: wisper: unknown asr provider"
    async with gateway_factory(asr_error=("provider_unavailable", detail)) as gw:
        code = await asyncio.to_thread(run_call, args("bot", caller(tmp_path / "in.wav", True), gw.ws_url))
    assert code == 1
    assert stderr_lines(capsys) == [f"vp call: turn -: asr error provider_unavailable: {detail}"]


async def test_a_quiet_call_that_went_well_exits_0(gateway_factory, greeting_robot, tmp_path, capsys) -> None:
    serve(greeting_robot.parent)
    async with gateway_factory() as gw:
        code = await asyncio.to_thread(
            run_call, args("robots/bot", caller(tmp_path / "in.wav", False), gw.ws_url)
        )
    assert code == 0 and stderr_lines(capsys) == []


async def test_a_wrong_robot_name_is_one_line(gateway_factory, greeting_robot, tmp_path, capsys) -> None:
    serve(greeting_robot.parent)
    async with gateway_factory() as gw:
        code = await asyncio.to_thread(
            run_call, args("nosuch", caller(tmp_path / "in.wav", False), gw.ws_url)
        )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = [text for text in err.splitlines() if text.startswith("vp call")]  # (log lines aside)
    assert line.startswith("vp call: no call token for robot 'nosuch': ") and "no robot 'nosuch'" in line


async def test_a_robot_that_fails_its_checks_gets_no_call(gateway_factory, robots, tmp_path, capsys) -> None:
    """The gateway checks the robot for a new call: a provider name no service knows is refused with
    its line, before anything is said (it used to fail mid-call as "asr provider_unavailable")."""
    folder = make_robot(robots, config={**CONFIG, "asr": {"provider": "wisper"}})
    serve(robots)
    async with gateway_factory() as gw:
        code = await asyncio.to_thread(run_call, args("bot", caller(tmp_path / "in.wav", True), gw.ws_url))
        assert gw.service.sessions == {}
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = [text for text in err.splitlines() if text.startswith("vp call")]
    n = next(
        i for i, text in enumerate((folder / "config.json").read_text().splitlines(), 1) if "wisper" in text
    )
    assert line.endswith(
        f"config.json: line {n}: asr.provider: unknown provider 'wisper' (known: {known('asr')})"
    )


async def test_a_live_edit_of_dialog_json_alone_is_seen_by_the_next_call(gateway_factory, robots) -> None:
    """No config.json touched: the gateway refuses new calls while dialog.json is broken, and takes
    them again once it is fixed."""
    folder = make_robot(robots)
    dialog = folder / "dialog.json"
    good = dialog.read_text()
    async with gateway_factory() as gw, httpx.AsyncClient() as client:

        async def token() -> httpx.Response:
            url, origin = f"http://{gw.base}/page-token", {"Origin": f"http://{gw.base}"}
            return await client.post(url, json={"robot": "bot"}, headers=origin)

        assert (await token()).status_code == 200
        dialog.write_text(good.replace('"reply": "Здравствуйте!"', '"reply": ""'))
        refused = await token()
        n = next(i for i, line in enumerate(dialog.read_text().splitlines(), 1) if '"reply": ""' in line)
        assert refused.status_code == 400
        assert refused.json()["error"] == (
            f"robot 'bot': dialog.json: line {n}: states.main.intents[0].reply: must be non-empty text"
        )
        dialog.write_text(good)
        assert (await token()).status_code == 200


def test_a_robot_folder_outside_the_served_folder_is_not_called(robots, tmp_path, capsys) -> None:
    make_robot(robots)
    serve(robots)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(robots / "bot", elsewhere / "bot")
    code = run_call(args(str(elsewhere / "bot"), caller(tmp_path / "in.wav", False)))
    assert code == 2
    assert stderr_lines(capsys) == [
        f"vp call: {elsewhere / 'bot'} is not in the robots folder the platform serves ({robots.resolve()}): "
        "start it with `vp up --robots elsewhere`, or copy the robot there"
    ]


def test_a_missing_or_broken_robot_folder_is_refused_before_the_call(robots, tmp_path, capsys) -> None:
    make_robot(robots, config={**CONFIG, "asr": {"provider": "wisper"}})
    serve(robots)
    wav = caller(tmp_path / "in.wav", False)
    assert run_call(args("robots/nosuch", wav)) == 2
    assert stderr_lines(capsys) == ["vp call: robots/nosuch: no robot there (no config.json)"]
    assert run_call(args("robots/bot", wav)) == 2
    [line] = stderr_lines(capsys)
    assert line.startswith("vp call: robots/bot/config.json: line ") and "unknown provider 'wisper'" in line


def test_a_wrong_robot_name_for_a_phone_call_is_one_line(robots, tmp_path, capsys) -> None:
    """gateway-fs would route an unknown robot by the dialed number: vp call says so first."""
    make_robot(robots)
    serve(robots)
    phone = argparse.Namespace(**{**vars(args("nosuch", caller(tmp_path / "in.wav", False))), "phone": True})
    assert run_call(phone) == 2
    assert stderr_lines(capsys) == [f"vp call: no robot 'nosuch' in {robots.resolve()}"]


def test_an_audio_file_that_does_not_decode_is_one_line(robots, tmp_path, capsys) -> None:
    make_robot(robots)
    serve(robots)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(bytes(range(256)) * 8)
    assert run_call(args("robots/bot", junk)) == 2
    assert stderr_lines(capsys) == [
        f"vp call: {junk}: not an audio file this tool knows (WAV, MP3, OGG, FLAC): "
        "cannot decode (InvalidDataError)"
    ]
