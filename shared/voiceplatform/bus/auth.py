"""Client side of NATS security: a service's user, password and TLS, as nats-py connect options.

Auth is used only when configured: with no ``NATS_USER`` a client connects anonymously (the
loopback development server has no users); with one, it logs in and takes its replies under its own
inbox (``_INBOX.<user>``), the only inbox its permissions let it read (``bus.permissions``).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from voiceplatform import metrics
from voiceplatform.bus.permissions import inbox
from voiceplatform.config.settings import ServiceSettings

log = structlog.get_logger("voiceplatform.bus")


_DENIED = re.compile(r"permissions violation for (\w+) to \"?([^\"'\s]+)", re.IGNORECASE)


def note_permission_denied(service: str, detail: str) -> bool:
    """When ``detail`` (a nats-py error) is the server refusing a publish or subscription, log it
    once as an error and count it (``vp_nats_permission_denied_total``); whether it was one."""
    found = _DENIED.search(detail)
    if found is None:
        return False
    operation, subject = found[1].lower(), found[2]
    metrics.NATS_PERMISSION_DENIED.labels(service, operation, metrics.stage_of(subject)).inc()
    log.error("nats.permission_denied", operation=operation, subject=subject)
    return True


class NatsAuthError(ValueError):
    """Credentials or TLS files that cannot work (a password without a user, a key without a cert)."""


@dataclass(frozen=True, slots=True)
class NatsAuth:
    user: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def of(cls, settings: ServiceSettings) -> NatsAuth:
        return cls(
            settings.nats_user,
            settings.nats_password,
            settings.nats_tls_ca,
            settings.nats_tls_cert,
            settings.nats_tls_key,
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (and ``NatsBus.connect``)."""
        options: dict[str, Any] = {}
        if self.user:
            if self.password is None:
                raise NatsAuthError(f"NATS user {self.user!r} has no password (NATS_PASSWORD)")
            options.update(
                user=self.user,
                password=self.password.get_secret_value(),
                inbox_prefix=inbox(self.user),
            )
        elif self.password is not None:
            raise NatsAuthError("NATS_PASSWORD is set without NATS_USER")
        if self.tls_ca or self.tls_cert:
            options["tls"] = self.tls_context()
        return options

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the server against ``tls_ca`` (the system's CAs without it); presents a client
        certificate when ``tls_cert`` is set."""
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert:
            if not self.tls_key:
                raise NatsAuthError("NATS_TLS_CERT is set without NATS_TLS_KEY")
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context
