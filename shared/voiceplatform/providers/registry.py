"""Lazy provider registry: names map to ``module:Class`` strings, imported only when chosen.

Vendor SDKs therefore load only in processes that use them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger("voiceplatform.providers")


class UnknownProvider(KeyError):
    pass


class ProviderRegistry:
    def __init__(self, role: str, entries: dict[str, str]) -> None:
        self.role = role
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def load(self, name: str) -> type[Any]:
        try:
            target = self._entries[name]
        except KeyError:
            raise UnknownProvider(f"unknown {self.role} provider {name!r}; known: {self.names()}") from None
        module_name, _, attr = target.partition(":")
        cls: type[Any] = getattr(importlib.import_module(module_name), attr)
        return cls


async def aclose_all(providers: Iterable[Any]) -> None:
    """Close every provider that holds resources (HTTP clients, processes); one failure stops none."""
    for provider in providers:
        closer = getattr(provider, "aclose", None)
        if closer is None:
            continue
        try:
            await closer()
        except Exception:
            log.warning("provider.close_failed", provider=getattr(provider, "name", type(provider).__name__))
