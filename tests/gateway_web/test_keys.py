"""Keypad keys from a browser: the same caller turn as a phone's DTMF."""

from __future__ import annotations

import json

from tests.waiting import wait_for
from voiceplatform.wire import AsrFinal, CallDtmf


async def test_a_dtmf_text_frame_is_a_caller_turn_of_digits(gateway_factory):
    async with gateway_factory() as gw:
        ws, call = await gw.call()
        call_id = call["call_id"]
        await ws.send(json.dumps({"type": "dtmf", "digits": "42#"}))

        def finals() -> list[AsrFinal]:
            return [m for m in gw.seen if isinstance(m, AsrFinal) and m.call_id == call_id]

        await wait_for(lambda: finals())
        (final,) = finals()
        assert final.text == "42" and final.dtmf
        keys = [m.digits for m in gw.seen if isinstance(m, CallDtmf) and m.call_id == call_id]
        assert keys == ["4", "2", "#"]
        await ws.close()
