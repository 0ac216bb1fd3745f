"""Reports at the end of each call: the JSON call log, then (when configured) a Telegram report.

Both are views of the call rebuilt from the stream when its ``call.ended`` comes: read every stored
event of the call back, build the transcript document, write it to the call's log file (the same
name and content each time: idempotent), then send the report. Nothing lives only in this process.

Delivery to Telegram is at least once, not exactly once: the calls (and report parts) sent are
remembered in a small bounded set, so a batch retried after a partial failure in this process does
not send a message twice, but a crash (or an ack that did not reach the server) between sending and
the batch's ack sends that call's report again after the redelivery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats.errors
import structlog

from voiceplatform import subjects
from voiceplatform.logging import bind_call
from voiceplatform.wire import CallEnded, Message
from vp_recorder.reports.call_log import write_call_logs_async
from vp_recorder.reports.telegram import TelegramError, TelegramReporter
from vp_recorder.stored import CallEventReader, StoredEvent
from vp_recorder.transcript import build_transcript

log = structlog.get_logger("vp_recorder.reports")

SENT_MEMORY = 4096  # report parts remembered as sent (two per call)


class ReportsPaused(Exception):
    """The store waits before its next attempt (Telegram's ``retry_after``, or a back-off)."""


class _RecentKeys:
    """A set that forgets its oldest keys beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: dict[str, None] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None
        while len(self._keys) > self.size:
            del self._keys[next(iter(self._keys))]


class ReportsStore:
    name = "reports"
    live = False
    stream_subjects = (subjects.ANY_LIFECYCLE,)

    def __init__(
        self,
        robots_dir: Path,
        reader: CallEventReader,
        telegram: TelegramReporter | None,
        *,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self.robots_dir = robots_dir
        self.reader = reader
        self.telegram = telegram
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.logs_written = 0
        self.reports_sent = 0
        self.reports_rejected = 0  # refused by Telegram for good (bad token, unknown chat): not retried
        self._sent = _RecentKeys(SENT_MEMORY)
        self._paused_until = 0.0  # time.monotonic()
        self._pause_s = 0.0

    def accepts(self, message: Message) -> bool:
        return isinstance(message, CallEnded)

    async def connect(self) -> None:
        # the consumer reconnects (at once) before it retries a failed write: while paused, refusing
        # to connect makes it wait with its back-off instead of retrying in a tight loop
        remaining = self._paused_until - time.monotonic()
        if remaining > 0:
            raise ReportsPaused(f"reports paused for {remaining:.1f} s after a failure")
        await asyncio.to_thread(self.robots_dir.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        if self.telegram is not None:
            await self.telegram.aclose()

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, TelegramError):
            return exc.retryable
        # disk (OSError, TimeoutError included), reading the call back from NATS, or paused
        return isinstance(exc, OSError | nats.errors.Error | ReportsPaused)

    async def write(self, events: Sequence[StoredEvent]) -> None:
        try:
            await self._write(events)
        except Exception as exc:
            if self.is_transient(exc):
                self._pause(exc.retry_after if isinstance(exc, TelegramError) else None)
            raise
        self._pause_s = 0.0

    async def _write(self, events: Sequence[StoredEvent]) -> None:
        ended: dict[str, StoredEvent] = {}
        for event in events:
            if isinstance(event.message, CallEnded):
                ended.setdefault(event.call_id, event)  # a redelivered call.ended once
        # every log file of the batch first (one hop to a thread for all of them): a Telegram
        # outage must not hold back the logs
        docs: list[dict[str, Any]] = []
        for call_id, event in ended.items():
            with bind_call(call_id=call_id):
                docs.append(await self._transcript(event))
        paths = await write_call_logs_async(self.robots_dir, docs)
        reports: list[tuple[str, dict[str, Any], Path]] = []
        for call_id, doc, path in zip(ended, docs, paths, strict=True):
            self.logs_written += 1
            with bind_call(call_id=call_id):
                log.info("recorder.call_log_written", path=str(path), events=doc.get("events"))
            reports.append((call_id, doc, path))
        if self.telegram is not None:
            for call_id, doc, path in reports:
                with bind_call(call_id=call_id):
                    await self._report(self.telegram, call_id, doc, path)

    async def _transcript(self, ended: StoredEvent) -> dict[str, Any]:
        events = await self.reader.read_call(ended.call_id)
        if all(e.seq != ended.seq for e in events):
            events = [*events, ended]  # the event in hand is stored: the read-back missed it
        return build_transcript(events)

    async def _report(
        self, telegram: TelegramReporter, call_id: str, doc: dict[str, Any], path: Path
    ) -> None:
        summary_key, document_key = f"{call_id}:summary", f"{call_id}:document"
        if summary_key in self._sent and document_key in self._sent:
            return  # sent before a later part of the batch failed
        try:
            if summary_key not in self._sent:
                await telegram.send_summary(doc)
                self._sent.add(summary_key)
            if document_key not in self._sent:
                await telegram.send_log_file(doc, path)
                self._sent.add(document_key)
        except TelegramError as exc:
            if exc.retryable:
                raise
            # refused for good: count it, say it once, and let the call (and the consumer) go on
            self._sent.add(summary_key)
            self._sent.add(document_key)
            self.reports_rejected += 1
            log.error("recorder.telegram_report_rejected", error=str(exc), error_code=exc.error_code)
            return
        self.reports_sent += 1
        log.info("recorder.telegram_report_sent")

    def _pause(self, retry_after: float | None) -> None:
        if retry_after is not None and retry_after > 0:
            delay = retry_after  # Telegram said how long: exactly that
        else:
            self._pause_s = min(self.retry_max_s, max(self.retry_min_s, self._pause_s * 2))
            delay = self._pause_s
        self._paused_until = time.monotonic() + delay
