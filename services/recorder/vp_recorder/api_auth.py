"""Bearer tokens of the recorder API, and what each role may see.

Two roles: ``operator`` sees everything; ``readonly`` sees calls and figures without personal data
(caller numbers are null, transcripts and turn texts are refused or left out). Tokens come from
``VP_API_OPERATOR_TOKEN`` / ``VP_API_READONLY_TOKEN``, else from the file ``VP_API_TOKENS_FILE``
(``vp up`` writes one, mode 0600, in its work dir). With no token configured the API refuses every
request: personal data is never served openly. ``/health`` and ``/metrics`` (added by the runner,
no personal data in either) need no token, so probes and Prometheus keep working.
"""

from __future__ import annotations

import hmac
from typing import Any, Literal

import structlog
from starlette.requests import Request

from voiceplatform.config.api_tokens import read_tokens_file
from voiceplatform.logging import register_secret
from vp_recorder.settings import RecorderSettings

log = structlog.get_logger("vp_recorder.api")

Role = Literal["operator", "readonly"]
REALM = 'Bearer realm="vp-recorder"'
# turn fields that carry what was said (personal data)
TURN_TEXT_FIELDS = ("user_text", "bot_text", "played_text")


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": REALM} if self.status == 401 else None


class ApiAuth:
    def __init__(self, tokens: dict[Role, str]) -> None:
        self._tokens = [(role, token.encode()) for role, token in tokens.items() if token]
        for _, token in self._tokens:
            register_secret(token.decode())

    @classmethod
    def from_settings(cls, settings: RecorderSettings) -> ApiAuth:
        tokens: dict[Role, str] = {}
        if settings.api_tokens_file is not None:
            from_file = read_tokens_file(settings.api_tokens_file)
            tokens["operator"] = from_file.get("operator", "")
            tokens["readonly"] = from_file.get("readonly", "")
        if settings.api_operator_token is not None:
            tokens["operator"] = settings.api_operator_token.get_secret_value()
        if settings.api_readonly_token is not None:
            tokens["readonly"] = settings.api_readonly_token.get_secret_value()
        auth = cls(tokens)
        if not auth.configured:
            log.warning(
                "recorder.api_locked",
                why="no API token configured (VP_API_OPERATOR_TOKEN, VP_API_READONLY_TOKEN or "
                "VP_API_TOKENS_FILE): every API request gets 401",
            )
        return auth

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def role(self, request: Request) -> Role:
        """The caller's role from ``Authorization: Bearer <token>``, or 401."""
        if not self._tokens:
            raise AuthError(401, "the recorder API has no tokens configured; see docs/operations.md")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        given = presented.strip().encode()
        found: Role | None = None
        for role, token in self._tokens:  # every token compared, in constant time each
            if hmac.compare_digest(given, token) and found is None:
                found = role
        if found is None:
            raise AuthError(401, "unknown bearer token")
        return found


def require_operator(role: Role, what: str) -> None:
    if role != "operator":
        raise AuthError(403, f"{what} is personal data: it needs the operator token")


def redact_call(item: dict[str, Any], role: Role) -> dict[str, Any]:
    if role != "operator":
        item["caller"] = None
    return item


def redact_turn(item: dict[str, Any], role: Role) -> dict[str, Any]:
    if role != "operator":
        for name in TURN_TEXT_FIELDS:
            item.pop(name, None)
    return item
