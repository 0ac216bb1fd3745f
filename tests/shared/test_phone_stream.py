"""The stream secret of gateway-fs: generated once with mode 0600, URL-safe, compared exactly."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from voiceplatform.phone_stream import (
    SECRET_ENV,
    dev_stream_secret,
    find_stream_secret,
    secret_matches,
    secret_problem,
    stream_url,
)


def test_vp_up_generates_the_secret_once_and_keeps_it_private(tmp_path: Path) -> None:
    workdir = tmp_path / ".vp"
    first = dev_stream_secret(workdir)
    assert secret_problem(first) is None
    assert stat.S_IMODE((workdir / "fs_stream_secret").stat().st_mode) == 0o600
    assert dev_stream_secret(workdir) == first  # the same on every later start


def test_a_client_finds_the_env_value_first_then_the_generated_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert find_stream_secret(tmp_path) == ""
    generated = dev_stream_secret(tmp_path)
    assert find_stream_secret(tmp_path) == generated
    monkeypatch.setenv(SECRET_ENV, "from-the-environment-123")
    assert find_stream_secret(tmp_path) == "from-the-environment-123"


def test_secret_rules_and_comparison() -> None:
    assert "not set" in (secret_problem("") or "")
    assert "shorter" in (secret_problem("short") or "")
    assert "only letters" in (secret_problem("has&ampersand-and-length") or "")
    good = "a-good_secret.of~length"
    assert secret_problem(good) is None
    assert secret_matches(good, good) and not secret_matches(good[:-1], good)
    assert not secret_matches(None, good) and not secret_matches("", "") and not secret_matches("x", "")
    assert stream_url("ws://gw:8090/call/", "u-1", good) == f"ws://gw:8090/call/u-1?key={good}"
