"""Per-call variables of an outbound call (call.started.variables) reach the LLM's system prompt."""

from __future__ import annotations

import json
from pathlib import Path

from voiceplatform.config import load_robot
from vp_router.app import llm_request
from vp_router.dialog_state import DialogState, decode_state, encode_state


def test_variables_fill_the_prompt_and_survive_the_state_store(tmp_path: Path) -> None:
    folder = tmp_path / "collector"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"llm": {"provider": "openai"}}))
    (folder / "prompt.txt").write_text(
        'Вы звоните клиенту {name} о долге {debt} ₽ по заказу {order}. Формат ответа: {"text": ...}',
        encoding="utf-8",
    )
    robot = load_robot(folder)
    state = DialogState(
        call_id="phone-1",
        robot=robot.name,
        channel="phone",
        sample_rate=8000,
        prompt_id="default",
        variables={"name": "Анна Петровна", "debt": "1500", "order": "A-17"},
    )
    state = decode_state(encode_state(state))  # as the KV store keeps it
    request = llm_request(state, robot, "u1", [], "алло")
    assert request.system_prompt == (
        'Вы звоните клиенту Анна Петровна о долге 1500 ₽ по заказу A-17. Формат ответа: {"text": ...}'
    )
    assert request.variables == {"name": "Анна Петровна", "debt": "1500", "order": "A-17"}  # for scripts
    inbound = DialogState(
        call_id="web-1", robot=robot.name, channel="web", sample_rate=16000, prompt_id="default"
    )
    assert "{name}" in llm_request(inbound, robot, "u1", [], "").system_prompt  # no variables: as written
