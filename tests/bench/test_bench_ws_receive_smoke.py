"""Smoke test of the WebSocket receive benchmark: gateway-fs's picows listener and both uvicorn
protocols serve the clients' frames and the server's CPU is read. Asserts that it measured, not the
figures."""

from __future__ import annotations

import pytest

from bench.bench_ws_receive import measure


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["picows", "websockets", "websockets-sansio"])
async def test_each_protocol_receives_the_frames_and_its_cpu_is_read(protocol: str) -> None:
    # enough messages (~1,500: ~50 ms of server CPU) that the kernel's 10 ms CPU ticks see some
    messages, cpu = await measure(protocol, calls=20, seconds=1.5)

    assert messages > 0  # how many depends on how busy the machine is: the figure is the bench's
    assert cpu > 0
