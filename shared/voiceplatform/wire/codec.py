"""Encode and decode wire messages: the one place bytes become typed messages."""

from __future__ import annotations

from typing import Any, TypeVar, Union

import msgspec

from voiceplatform.wire import messages as m


class WireError(ValueError):
    """A message that cannot be accepted: not msgpack, unknown type, bad field, newer version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _all_message_types() -> tuple[type[m.Message], ...]:
    found: list[type[m.Message]] = []
    pending: list[type[m.Message]] = [m.Message]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            pending.append(sub)
    return tuple(found)


MESSAGE_TYPES = _all_message_types()
TYPES_BY_NAME: dict[str, type[m.Message]] = {str(cls.__struct_config__.tag): cls for cls in MESSAGE_TYPES}
_AnyMessage = Union[MESSAGE_TYPES]  # type: ignore[valid-type]  # noqa: UP007
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(_AnyMessage)

T = TypeVar("T", bound=m.Message)


def encode(msg: m.Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> m.Message:
    """Decode one message; raise ``WireError`` with a short ``reason`` usable as a metric label."""
    try:
        msg: m.Message = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason = "unknown_type" if "Invalid value" in text and "`$.type`" in text else "invalid"
        if "missing required field `type`" in text.lower() or "Expected `object`" in text:
            reason = "invalid"
        raise WireError(reason, text) from exc
    except msgspec.DecodeError as exc:
        raise WireError("not_msgpack", str(exc)) from exc
    if msg.v > type(msg).VERSION:
        raise WireError("unsupported_version", f"{msg.type_name} v{msg.v} > v{type(msg).VERSION}")
    return msg


def decode_as(data: bytes, cls: type[T]) -> T:
    msg = decode(data)
    if not isinstance(msg, cls):
        raise WireError("unexpected_type", f"expected {cls.__name__}, got {msg.type_name}")
    return msg
