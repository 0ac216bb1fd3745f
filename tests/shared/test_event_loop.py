"""``run_event_loop``: services run on the event loop their settings name (uvloop on the phone path)."""

from __future__ import annotations

import asyncio

import pytest

from voiceplatform.config import ServiceSettings
from voiceplatform.runtime import run_event_loop


def loop_module(event_loop: str) -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_event_loop(main(), event_loop)
    return seen[0]


@pytest.mark.parametrize(("name", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_named_loop_runs_the_service(name: str, module: str) -> None:
    assert loop_module(name).split(".")[0] == module


def test_the_phone_path_services_default_to_uvloop_and_the_rest_to_asyncio() -> None:
    from vp_asr.settings import AsrSettings
    from vp_gateway_fs.settings import GatewayFsSettings
    from vp_llm.settings import LlmSettings
    from vp_router.settings import RouterSettings
    from vp_tts.settings import TtsSettings
    from vp_vad.settings import VadSettings

    assert ServiceSettings().event_loop == "asyncio"
    phone_path = (GatewayFsSettings, VadSettings, AsrSettings, RouterSettings, LlmSettings, TtsSettings)
    assert {cls().event_loop for cls in phone_path} == {"uvloop"}
