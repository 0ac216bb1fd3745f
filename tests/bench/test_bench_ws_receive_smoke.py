"""Smoke test of the WebSocket receive benchmark: both uvicorn protocols serve the clients' frames and
the server's CPU is read. Asserts that it measured, not the figures."""

from __future__ import annotations

import pytest

from bench.bench_ws_receive import measure


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["websockets", "websockets-sansio"])
async def test_each_protocol_receives_the_frames_and_its_cpu_is_read(protocol: str) -> None:
    messages, cpu = await measure(protocol, calls=2, seconds=1.0)

    assert messages > 0  # how many depends on how busy the machine is: the figure is the bench's
    assert cpu > 0
