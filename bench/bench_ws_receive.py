"""What receiving one caller frame over a WebSocket costs the server, per WebSocket server.

gateway-fs takes every caller frame of FreeSWITCH's mod_audio_stream as one WebSocket message. This
runs a server in a child process on uvloop, once per ``--ws`` choice, and ``--calls`` clients in this
process each sending a 20 ms frame (320 bytes, 8 kHz) every 20 ms. It prints the server's CPU time
(user + system, ``/proc/<pid>/stat``) per message received, over the window in which every client is
sending. The choices:

- ``picows``: gateway-fs's own stream listener (``vp_gateway_fs.stream_socket``), each frame handed
  to a handler from the read callback as a running call's are;
- ``websockets-sansio``, ``websockets``: a FastAPI WebSocket endpoint on uvicorn with that protocol
  (accept, then ``receive()`` in a loop), as gateway-fs served the streams before; the other
  services' WebSockets (gateway-web) still run on ``websockets-sansio``.

    .venv/bin/python bench/bench_ws_receive.py [--calls 40] [--seconds 8] [--ws picows websockets-sansio]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets

from bench.phone_load import cpu_seconds
from voiceplatform_devstack.devinfra import free_port, port_open

FRAME = b"\0" * 320  # 20 ms at 8 kHz, 16-bit
SERVER = """
import sys, uvicorn, uvloop
from fastapi import FastAPI, WebSocket
app = FastAPI()
@app.websocket("/call/{uuid}")
async def call(ws: WebSocket, uuid: str) -> None:
    await ws.accept()
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass
config = uvicorn.Config(app, port=int(sys.argv[2]), log_level="warning", lifespan="off",
                        ws=sys.argv[1], ws_per_message_deflate=False)
uvloop.run(uvicorn.Server(config).serve())
"""
PICOWS_SERVER = """
import asyncio, sys, uvloop
from vp_gateway_fs.stream_socket import serve_streams
received = [0]
async def call(sock, uuid):
    sock.deliver_to(lambda data: received.__setitem__(0, received[0] + len(data)) and False)
    await sock.finished
async def main():
    server = await serve_streams("127.0.0.1", int(sys.argv[2]), call, max_message_bytes=1 << 16,
                                 spawn=asyncio.ensure_future)
    await server.serve_forever()
uvloop.run(main())
"""


async def caller(port: int, index: int, start: float, seconds: float, sent: list[int]) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/call/c{index}", compression=None) as ws:
        loop = asyncio.get_running_loop()
        due = start + (index % 50) * 0.0004  # spread like calls that began at different moments
        while due < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await ws.send(FRAME)
            sent[0] += 1
            due += 0.02


async def measure(protocol: str, calls: int, seconds: float) -> tuple[int, float]:
    """(messages sent in the window, the server's CPU seconds over it)."""
    port = free_port()
    code = PICOWS_SERVER if protocol == "picows" else SERVER
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", code, protocol, str(port))
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if server.returncode is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {protocol} server did not start")
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        start, sent = loop.time() + 1.0, [0]
        callers = asyncio.gather(*(caller(port, i, start, seconds + 1.0, sent) for i in range(calls)))
        await asyncio.sleep(2.0)  # every caller connected and sending
        sent_before, cpu_before = sent[0], cpu_seconds(server.pid)
        await asyncio.sleep(seconds)
        messages, cpu = sent[0] - sent_before, cpu_seconds(server.pid) - cpu_before
        await callers
        return messages, cpu
    finally:
        server.terminate()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--ws", nargs="+", default=["picows", "websockets-sansio"])
    args = parser.parse_args()
    print(f"WebSocket receive: {args.calls} clients x one 320-byte message per 20 ms, {args.seconds:.0f} s")
    for protocol in args.ws:
        messages, cpu = asyncio.run(measure(protocol, args.calls, args.seconds))
        print(
            f"{protocol:>18}: {messages} messages, server CPU {cpu * 1e6 / messages:.1f} µs per message, "
            f"{cpu * 1e3 / (args.calls * args.seconds):.2f} ms per call-second"
        )


if __name__ == "__main__":
    main()
