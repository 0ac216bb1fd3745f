"""`vp up` tells where the console is: the first recorder's port, as start_services assigns it."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceplatform.cli import up


def test_the_console_url_is_the_first_recorders_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up.ServiceProcess, "start", lambda self: None)  # ports only, no processes
    procs = up.start_services({}, tmp_path, gateway_port=8000, scale={"recorder": 2})
    recorders = [p for p in procs if p.module == "vp_recorder"]
    assert [p.env["VP_HTTP_PORT"] for p in recorders] == ["8101", "8102"]
    assert up.console_url(procs) == "http://127.0.0.1:8101/console/"
    assert up.console_url([p for p in procs if p.module != "vp_recorder"]) is None
