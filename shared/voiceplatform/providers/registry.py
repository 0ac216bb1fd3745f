"""Lazy provider registry: names map to ``module:Class`` strings, imported only when chosen.

Vendor SDKs therefore load only in processes that use them. Every entry is a ``ProviderBase``
subclass, built one way: ``cls.from_context(ProviderContext(...))`` (see ``providers/base.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog

from voiceplatform.providers.base import ProviderBase, ProviderContext

if TYPE_CHECKING:
    from voiceplatform.config import RobotConfig

log = structlog.get_logger("voiceplatform.providers")

P = TypeVar("P")


class UnknownProvider(KeyError):
    pass


class ProviderRegistry:
    def __init__(self, role: str, entries: dict[str, str]) -> None:
        self.role = role
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def load(self, name: str) -> type[ProviderBase]:
        try:
            target = self._entries[name]
        except KeyError:
            raise UnknownProvider(f"unknown {self.role} provider {name!r}; known: {self.names()}") from None
        module_name, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, ProviderBase)):
            raise TypeError(f"{self.role} provider {name!r} ({target}) is not a ProviderBase subclass")
        return cls

    def build(self, name: str, ctx: ProviderContext) -> ProviderBase:
        """A new instance of provider ``name`` (``UnknownProvider``, or the provider's own error)."""
        return self.load(name).from_context(ctx)


async def aclose_all(providers: Iterable[object]) -> None:
    """Close every provider that holds resources (HTTP clients, processes); one failure stops none."""
    for provider in providers:
        if not isinstance(provider, ProviderBase):
            continue
        try:
            await provider.aclose()
        except Exception:
            log.warning("provider.close_failed", provider=provider.name)


class RobotProviders(Generic[P]):
    """Provider instances built for a robot (its keys, its options), one per (robot, provider).

    A robot whose configuration was reloaded gets a new instance; the old one is kept until the
    service closes, because turns in flight may still be using it.
    """

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], tuple[RobotConfig, P]] = {}
        self._retired: list[P] = []

    def get(self, robot: RobotConfig, name: str, build: Callable[[], P]) -> P:
        key = (robot.name, name)
        cached = self._live.get(key)
        if cached is not None and cached[0] is robot:
            return cached[1]
        made = build()
        if cached is not None:
            self._retired.append(cached[1])
        self._live[key] = (robot, made)
        return made

    def names(self) -> list[str]:
        return sorted({name for _, name in self._live})

    def live(self) -> list[P]:
        """The providers current robot configurations use."""
        return [p for _, p in self._live.values()]

    async def aclose(self) -> None:
        providers = [p for _, p in self._live.values()] + self._retired
        self._live, self._retired = {}, []
        await aclose_all(providers)
