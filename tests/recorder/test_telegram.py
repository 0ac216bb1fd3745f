"""Telegram call reports against a local Bot API stand-in, and the reports store end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.recorder.test_call_log import ROBOT, call_document, call_messages, stored
from tests.stand_ins.telegram_server import CAPTION_LIMIT, MESSAGE_LIMIT, TelegramStandIn, utf16_len
from voiceplatform.wire import CallEnded, CallStarted, Message
from voiceplatform_devstack.devinfra import free_port
from vp_recorder.reports.call_log import write_call_log
from vp_recorder.reports.telegram import TelegramError, TelegramReporter, clip, summary_text
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.reports import ReportsPaused, ReportsStore

TOKEN = "7301234567:AAHfake-Token_for_the_stand_in"
BAD_TOKEN = "7301234567:AAHwrong-Token_nobody_knows"
CHAT = "-1001234567890"


class MemoryCallReader:
    """Every stored event of each call, in stream order (what the JetStream reader returns)."""

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        self.reads: list[str] = []

    async def read_call(self, call_id: str) -> list[StoredEvent]:
        self.reads.append(call_id)
        return [e for e in self.events if e.call_id == call_id]


@pytest.fixture
async def tg() -> AsyncIterator[TelegramStandIn]:
    async with TelegramStandIn(token=TOKEN, chats=[CHAT]) as server:
        yield server


@pytest.fixture
async def reporter(tg: TelegramStandIn) -> AsyncIterator[TelegramReporter]:
    rep = TelegramReporter(TOKEN, CHAT, api_url=tg.api_url, timeout_s=5)
    yield rep
    await rep.aclose()


def ended_of(events: list[StoredEvent]) -> list[StoredEvent]:
    return [e for e in events if isinstance(e.message, CallEnded)]


def leak_text(exc: BaseException) -> str:
    """Everything an exception shows when printed or logged, chained exceptions included."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


# ---- the reporter -------------------------------------------------------------------------------


async def test_report_is_a_message_then_the_log_file(
    tg: TelegramStandIn, reporter: TelegramReporter, tmp_path: Path
) -> None:
    doc = call_document()
    log_file = write_call_log(tmp_path, doc)
    await reporter.send_report(doc, log_file)

    assert [r.method for r in tg.requests] == ["sendMessage", "sendDocument"]
    message, document = tg.requests
    assert message.token == TOKEN and message.status == 200
    assert message.content_type.startswith("application/json")
    assert message.fields["chat_id"] == CHAT
    assert "parse_mode" not in message.fields  # plain text: nothing to escape
    text = message.fields["text"]
    for expected in (
        f"Robot: {ROBOT}",
        "Channel: web",
        "ID: web-0001",
        "Started: 2026-02-25 22:43:59 UTC",
        "Duration: 0:20 (20.0 s)",
        "End reason: hangup",
        "Turns: 3",
        "Barge-ins: 1",
        "Errors: 0",
        "Voice-to-voice p50: 900 ms",  # median of 1000 and 800
        "Клиент: Хочу записаться на приём",
        "Робот: Конечно, в субботу [перебит / interrupted]",  # what the caller heard
    ):
        assert expected in text, expected

    assert document.status == 200 and document.content_type.startswith("multipart/form-data")
    assert document.fields["chat_id"] == CHAT
    assert document.files["document"].filename == log_file.name == "20260225_224359_web_web-0001.json"
    assert document.files["document"].content == log_file.read_bytes()
    assert "web-0001" in document.fields["caption"]


async def test_report_without_a_file_is_only_the_message(
    tg: TelegramStandIn, reporter: TelegramReporter
) -> None:
    await reporter.send_report(call_document(), None)
    assert [r.method for r in tg.requests] == ["sendMessage"]


async def test_long_texts_are_clipped_to_the_bot_api_limits(
    tg: TelegramStandIn, reporter: TelegramReporter, tmp_path: Path
) -> None:
    doc = call_document()
    # turns full of characters outside the BMP (two UTF-16 units each) and a huge robot name
    doc["segments"] = [
        {"role": "user" if i % 2 else "assistant", "text": "😀 слово " * 400, "turn_id": f"t{i}"}
        for i in range(40)
    ]
    doc["robot"] = "r" * 3000
    doc["caller"] = "😀" * 3000
    log_file = tmp_path / "log.json"
    log_file.write_text(json.dumps(doc), encoding="utf-8")
    await reporter.send_report(doc, log_file)

    message, document = tg.requests  # the stand-in answers 400 above the limits
    assert message.status == 200 and document.status == 200
    assert MESSAGE_LIMIT - 2 <= utf16_len(message.fields["text"]) <= MESSAGE_LIMIT
    assert message.fields["text"].endswith("…")
    assert CAPTION_LIMIT - 2 <= utf16_len(document.fields["caption"]) <= CAPTION_LIMIT


def test_clip_counts_utf16_units_and_never_splits_a_surrogate_pair() -> None:
    assert clip("abc", 3) == "abc"
    assert clip("abcd", 3) == "ab…"
    clipped = clip("😀" * 10, 6)
    assert clipped == "😀😀…" and utf16_len(clipped) == 5


def test_summary_of_a_call_without_figures() -> None:
    doc: dict[str, Any] = {"call_id": "c-1", "robot": None, "segments": [], "metadata": {}}
    text = summary_text(doc)
    assert "ID: c-1" in text and "Robot: —" in text and "Duration: —" in text
    assert "p50" not in text and "Last turns" not in text


async def test_bad_token_is_final_and_never_shown(
    tg: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs each request URL (with the token) at INFO
    bad = TelegramReporter(BAD_TOKEN, CHAT, api_url=tg.api_url)
    try:
        with pytest.raises(TelegramError) as info:
            await bad.send_summary(call_document())
    finally:
        await bad.aclose()
    exc = info.value
    assert exc.retryable is False and exc.error_code == 401
    assert "Unauthorized" in str(exc)
    assert BAD_TOKEN not in leak_text(exc) and BAD_TOKEN not in repr(bad)
    assert tg.requests[0].token == BAD_TOKEN and tg.requests[0].status == 401  # it was really sent
    http_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("sendMessage" in line for line in http_lines)  # the request line is there, masked
    assert not any(BAD_TOKEN in line for line in http_lines)


async def test_network_error_is_retryable_and_hides_the_url() -> None:
    reporter = TelegramReporter(TOKEN, CHAT, api_url=f"http://127.0.0.1:{free_port()}", timeout_s=2)
    try:
        with pytest.raises(TelegramError) as info:
            await reporter.send_summary(call_document())
    finally:
        await reporter.aclose()
    exc = info.value
    assert exc.retryable is True and exc.error_code is None
    assert "ConnectError" in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None  # the httpx exception (with URL) is gone
    assert TOKEN not in leak_text(exc) and "127.0.0.1" not in leak_text(exc)


async def test_rate_limit_is_retryable_with_retry_after(
    tg: TelegramStandIn, reporter: TelegramReporter
) -> None:
    tg.fail_next(429, retry_after=7)
    with pytest.raises(TelegramError) as info:
        await reporter.send_summary(call_document())
    assert info.value.retryable is True
    assert info.value.error_code == 429 and info.value.retry_after == 7.0
    assert "retry after 7" in str(info.value)
    await reporter.send_summary(call_document())  # the next one goes through
    assert [r.status for r in tg.requests] == [429, 200]


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (502, True), (400, False), (403, False)])
async def test_which_errors_are_retryable(
    tg: TelegramStandIn, reporter: TelegramReporter, status: int, retryable: bool
) -> None:
    tg.fail_next(status)
    with pytest.raises(TelegramError) as info:
        await reporter.send_summary(call_document())
    assert info.value.retryable is retryable and info.value.error_code == status
    assert info.value.retry_after is None


async def test_unknown_chat_is_final(tg: TelegramStandIn) -> None:
    reporter = TelegramReporter(TOKEN, "-100999", api_url=tg.api_url)
    try:
        with pytest.raises(TelegramError, match="chat not found") as info:
            await reporter.send_summary(call_document())
    finally:
        await reporter.aclose()
    assert info.value.retryable is False and info.value.error_code == 400


# ---- the reports store ---------------------------------------------------------------------------


def call_events(call_id: str = "web-0001", first_seq: int = 1, **kwargs: Any) -> list[StoredEvent]:
    return stored(call_messages(call_id, **kwargs), first_seq)


def log_files(robots: Path) -> list[Path]:
    return sorted(robots.rglob("*.json"))


def everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


async def test_store_writes_the_log_and_reports_each_ended_call(
    tg: TelegramStandIn, reporter: TelegramReporter, tmp_path: Path
) -> None:
    first, second = call_events("web-0001"), call_events("web-0002", first_seq=100)
    reader = MemoryCallReader(first + second)
    store = ReportsStore(tmp_path, reader, reporter)
    assert store.name == "reports"
    messages: list[Message] = [e.message for e in first]
    assert [store.accepts(m) for m in messages].count(True) == 1  # only call.ended
    await store.connect()
    batch = ended_of(first) + ended_of(second) + ended_of(first)  # one of them redelivered
    await store.write(batch)

    assert reader.reads == ["web-0001", "web-0002"]
    files = log_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        f"{ROBOT}/logs/20260225_224359_web_web-0001.json",
        f"{ROBOT}/logs/20260225_224359_web_web-0002.json",
    ]
    assert json.loads(files[0].read_bytes())["segments"][1]["text"] == "Хочу записаться на приём"
    assert [r.method for r in tg.requests] == ["sendMessage", "sendDocument"] * 2
    sent = {r.files["document"].filename: r.files["document"].content for r in tg.calls("sendDocument")}
    assert sent == {f.name: f.read_bytes() for f in files}
    assert store.logs_written == 2 and store.reports_sent == 2

    await store.write(ended_of(first))  # redelivered later in this process: log again, no second report
    assert len(tg.requests) == 4 and store.logs_written == 3
    await store.close()


async def test_store_retry_after_a_partial_failure_does_not_repeat_the_message(
    tg: TelegramStandIn, reporter: TelegramReporter, tmp_path: Path
) -> None:
    events = call_events()
    store = ReportsStore(tmp_path, MemoryCallReader(events), reporter, retry_min_s=0.2, retry_max_s=1)
    await store.connect()
    tg.fail_next(500, method="sendDocument")
    with pytest.raises(TelegramError) as info:
        await store.write(ended_of(events))
    assert store.is_transient(info.value)
    assert len(log_files(tmp_path)) == 1  # the log is there although the report failed

    # the consumer reconnects before it retries: the store makes it wait (its own back-off)
    with pytest.raises(ReportsPaused) as paused:
        await store.connect()
    assert store.is_transient(paused.value)
    await asyncio.sleep(0.25)
    await store.connect()
    await store.write(ended_of(events))
    assert [(r.method, r.status) for r in tg.requests] == [
        ("sendMessage", 200),
        ("sendDocument", 500),
        ("sendDocument", 200),
    ]
    assert store.reports_sent == 1


async def test_store_waits_as_long_as_telegram_says(
    tg: TelegramStandIn, reporter: TelegramReporter, tmp_path: Path
) -> None:
    events = call_events()
    store = ReportsStore(tmp_path, MemoryCallReader(events), reporter, retry_min_s=0.01, retry_max_s=0.01)
    tg.fail_next(429, retry_after=1)
    with pytest.raises(TelegramError) as info:
        await store.write(ended_of(events))
    failed_at = time.monotonic()
    assert store.is_transient(info.value) and info.value.retry_after == 1.0
    while True:
        try:
            await store.connect()
            break
        except ReportsPaused:
            await asyncio.sleep(0.05)
    assert time.monotonic() - failed_at >= 0.9  # retry_after, not the store's 10 ms back-off
    await store.write(ended_of(events))
    assert [r.status for r in tg.calls("sendMessage", ok_only=False)] == [429, 200]


async def test_store_with_a_bad_token_still_writes_logs_and_goes_on(
    tg: TelegramStandIn, tmp_path: Path
) -> None:
    bad = TelegramReporter(BAD_TOKEN, CHAT, api_url=tg.api_url)
    events = call_events()
    store = ReportsStore(tmp_path, MemoryCallReader(events), bad)
    with capture_logs() as logs:
        await store.write(ended_of(events))  # does not raise: the consumer must not stall on it
        await store.write(ended_of(events))  # redelivered: not tried (nor logged) again
    await store.close()
    assert len(log_files(tmp_path)) == 1
    assert [r.method for r in tg.requests] == ["sendMessage"]  # no document after a final refusal
    assert store.reports_rejected == 1 and store.reports_sent == 0
    rejected = [e for e in logs if e["event"] == "recorder.telegram_report_rejected"]
    assert len(rejected) == 1 and rejected[0]["error_code"] == 401
    assert BAD_TOKEN not in repr(logs)


async def test_store_without_telegram_only_writes_logs(tmp_path: Path) -> None:
    events = call_events()
    store = ReportsStore(tmp_path, MemoryCallReader(events), None)
    await store.connect()
    await store.write(ended_of(events))
    await store.close()
    assert [f.name for f in log_files(tmp_path)] == ["20260225_224359_web_web-0001.json"]


async def test_store_writes_from_call_ended_alone_when_the_read_back_is_empty(tmp_path: Path) -> None:
    ended = ended_of(call_events())
    store = ReportsStore(tmp_path, MemoryCallReader([]), None)
    await store.write(ended)
    (path,) = log_files(tmp_path)
    assert path.relative_to(tmp_path).as_posix() == "_unknown/logs/20260225_224359_unknown_web-0001.json"
    assert json.loads(path.read_bytes())["end_reason"] == "hangup"


async def test_store_rejects_an_unsafe_robot_name(
    tg: TelegramStandIn, reporter: TelegramReporter, tmp_path: Path
) -> None:
    robots = tmp_path / "robots"
    events = call_events(robot="../../outside")
    assert isinstance(events[0].message, CallStarted) and events[0].message.robot == "../../outside"
    store = ReportsStore(robots, MemoryCallReader(events), reporter)
    await store.connect()
    with pytest.raises(ValueError) as info:
        await store.write(ended_of(events))
    assert not store.is_transient(info.value)  # the consumer parks that call.ended
    assert everything_under(tmp_path) == [robots] and tg.requests == []


async def test_store_disk_errors_are_transient(tmp_path: Path) -> None:
    robots = tmp_path / "robots"
    robots.write_text("not a folder")
    events = call_events()
    store = ReportsStore(robots, MemoryCallReader(events), None, retry_min_s=0.01)
    with pytest.raises(OSError) as info:
        await store.write(ended_of(events))
    assert store.is_transient(info.value)
    await asyncio.sleep(0.02)
    with pytest.raises(OSError):
        await store.connect()  # the robots folder cannot be made: still down
