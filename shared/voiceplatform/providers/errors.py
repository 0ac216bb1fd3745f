"""One error tree for every provider, mapped at the provider boundary.

``retryable`` tells the single retry/fallback layer whether another attempt (same provider, next key,
or next provider in the chain) may help. Messages must never contain secrets: build them from
status codes and vendor error codes, not from raw SDK exception text.
"""

from __future__ import annotations

import re

from voiceplatform.logging import MASK, mask_secrets


class ProviderError(Exception):
    kind = "error"

    def __init__(self, provider: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable


class ProviderStatusError(ProviderError):
    kind = "status"

    def __init__(self, provider: str, status: int, message: str = "", *, retryable: bool) -> None:
        super().__init__(provider, f"HTTP {status} {message}".strip(), retryable=retryable)
        self.status = status


class ProviderConnectionError(ProviderError):
    kind = "connection"

    def __init__(self, provider: str, message: str = "connection failed") -> None:
        super().__init__(provider, message, retryable=True)


class ProviderTimeoutError(ProviderError):
    kind = "timeout"

    def __init__(self, provider: str, message: str = "timed out") -> None:
        super().__init__(provider, message, retryable=True)


class ProviderProtocolError(ProviderError):
    """The provider answered something we cannot parse (malformed JSON, wrong audio format)."""

    kind = "protocol"

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=True)


def error_from_status(provider: str, status: int, message: str = "") -> ProviderStatusError:
    """401/403 and other 4xx: not retryable (bad key, bad request); 408/409/429 and 5xx: retryable."""
    retryable = status in (408, 409, 425, 429) or status >= 500
    return ProviderStatusError(provider, status, message, retryable=retryable)


# credentials as they show up in exception text: ``key=…`` in URLs, ``Bearer …``/``Api-Key …`` headers
_CREDENTIAL = re.compile(
    r"((?:api[_-]?key|key|token|secret|password|authorization)\s*[=:]\s*(?:(?:bearer|api-key)\s+)?"
    r"|(?:bearer|api-key)\s+)[^\s&]+",
    re.IGNORECASE,
)
DETAIL_CHARS = 300
_UNEXPECTED_MESSAGE_CHARS = 120


def safe_text(text: str, limit: int = DETAIL_CHARS) -> str:
    """One line of ``text`` fit for a published message: registered secrets and credentials masked."""
    line = " ".join(mask_secrets(text).split())
    return _CREDENTIAL.sub(lambda m: f"{m.group(1)}{MASK}", line)[:limit]


def unexpected_detail(provider: str, exc: BaseException) -> str:
    """What an unexpected exception from a provider may publish: its class and a short, masked
    message (never a traceback or a raw dump: those go to the log only)."""
    message = safe_text(str(exc), _UNEXPECTED_MESSAGE_CHARS)
    return f"{provider}: {type(exc).__name__}" + (f": {message}" if message else "")
