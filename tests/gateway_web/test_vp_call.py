"""`vp call`'s client (place_call) gets a token by itself, and reports a refused call."""

from __future__ import annotations

import numpy as np

from tests.gateway_web.helpers import next_event
from voiceplatform.cli.call import place_call
from voiceplatform.web_protocol import CLOSE_BUSY


async def test_place_call_fetches_a_page_token_and_hangs_up(gateway_factory):
    async with gateway_factory() as gw:
        result = await place_call(gw.ws_url, "bot", np.zeros(16000, dtype=np.int16), tail_s=5)
    assert result.call_id.startswith("web-") and result.end_reason == "caller_hangup"
    assert not result.refused and result.robot_audio  # the greeting was heard


async def test_place_call_with_the_api_key_and_a_busy_gateway(gateway_factory):
    async with gateway_factory(max_calls=1, web_api_key="k" * 40) as gw:
        holder, _ = await gw.call()
        result = await place_call(
            gw.ws_url, "bot", np.zeros(1600, dtype=np.int16), tail_s=1, api_key="k" * 40
        )
        assert (result.refused, result.close_code, result.call_id) == ("busy", CLOSE_BUSY, "")
        assert any(e["type"] == "busy" for e in result.events)
        await holder.send('{"type": "hangup"}')
        await next_event(holder, "call.ended")
