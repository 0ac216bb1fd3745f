"""The bus: one protocol, a NATS implementation and an in-memory twin with the same semantics."""

from voiceplatform.bus.base import (
    Bus,
    BusError,
    Envelope,
    Handler,
    InlineHandler,
    KeyValue,
    KvConflict,
    NoResponders,
    RequestTimeout,
    Subscription,
)

__all__ = [
    "Bus",
    "BusError",
    "Envelope",
    "Handler",
    "InlineHandler",
    "KeyValue",
    "KvConflict",
    "NoResponders",
    "RequestTimeout",
    "Subscription",
]
