"""The uvicorn plumbing every HTTP/WebSocket stand-in shares: serve an ASGI app on 127.0.0.1.

A stand-in subclasses ``UvicornStandIn``, builds its app (usually routes bound to ``self``) and passes
it up::

    class FooStandIn(UvicornStandIn):
        def __init__(self) -> None:
            self.behavior = Behavior()
            super().__init__(Starlette(routes=[...]))

    async with FooStandIn() as server:
        ...  # server.port is the random port the OS picked

The server runs as a task in the test's own event loop, so handlers can share state with the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Self

import uvicorn
from starlette.types import ASGIApp


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers (pytest owns SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class UvicornStandIn:
    """Serves ``app`` on 127.0.0.1 at a random port between ``start()`` and ``stop()``."""

    def __init__(self, app: ASGIApp, *, log_level: str = "warning", ws: str = "auto") -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, lifespan="off", ws=ws)
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0  # the bound port, known once start() returns

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():  # failed to bind: raise its error instead of waiting forever
                await self._task
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
