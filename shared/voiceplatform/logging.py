"""structlog JSON logging with call_id/turn_id context, secret masking and PII suppression.

- ``bind_call(call_id=..., turn_id=...)`` puts ids into contextvars; every line in that task has them.
- While traces are on (``voiceplatform.tracing``), a line with both ids also has the turn's ``trace_id``.
- Keys named ``pii_*`` (transcripts, phone numbers, prompts) are dropped unless VP_LOG_PII=1.
- Values of registered secrets are masked wherever they appear, and so is any value whose key looks
  like a credential (``*key``, ``*token``, ``*secret``, ``*password``, ``authorization``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from voiceplatform.tracing import add_trace_id

_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|authorization|dsn)$", re.IGNORECASE)
_secrets: set[str] = set()
# the same secrets, longest first (a secret may contain a shorter one); rebuilt when one is added,
# not sorted again for every string of every log line
_longest_first: tuple[str, ...] = ()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret value so it is masked in every log line (values under 4 chars are ignored).
    A URL's password (``postgresql://user:pw@host/db``) is masked on its own too."""
    global _longest_first
    if value and len(value) >= 4:
        _secrets.add(value)
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            _secrets.update(p for p in (password, unquote(password)) if len(p) >= 4)
        _longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def mask_secrets(text: str) -> str:
    for secret in _longest_first:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


@functools.lru_cache(maxsize=4096)
def _credential_key(key: str) -> bool:
    """A key whose value is masked whatever it is (log lines use a few hundred distinct keys)."""
    return _SECRET_KEY.search(key) is not None


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    keep_pii = os.environ.get("VP_LOG_PII", "") == "1"
    for key, value in list(event.items()):
        if key.startswith("pii_") and not keep_pii:
            del event[key]
        elif _credential_key(key) and value:
            event[key] = MASK
        elif _longest_first and isinstance(value, str):
            event[key] = mask_secrets(value)
    return event


def _mask_rendered(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # exception text is rendered late: mask it too
    exc = event.get("exception")
    if isinstance(exc, str):
        event["exception"] = mask_secrets(exc)
    return event


def _stderr_logger(*_: Any) -> structlog.WriteLogger:
    # resolve sys.stderr at use, not at configure time (it may be replaced after start-up).
    # WriteLogger writes the line and its newline at once: print() (PrintLogger) makes them two
    # write() system calls when stderr is unbuffered, as PYTHONUNBUFFERED=1 in the image makes it
    return structlog.WriteLogger(sys.stderr)


def configure_logging(service: str, level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and stdlib logging once per process."""
    if json is None:
        json = os.environ.get("VP_LOG_FORMAT", "json") == "json" or not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False) if json else (structlog.dev.ConsoleRenderer())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info,
            _mask_rendered,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())


class SecretMaskingFilter(logging.Filter):
    """Masks registered secrets in stdlib records too (a library's debug line may echo a header)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


@contextmanager
def bind_call(**ids: str) -> Iterator[None]:
    """Bind call_id / turn_id (or any ids) for the duration of a block in this task."""
    tokens = structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v})
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
