"""Which robot answers a phone call: from mod_audio_stream's metadata (its first text frame).

The dialplan puts the metadata on ``uuid_audio_stream ... start <url> mono 8k <metadata>``: a JSON
object ``{"robot": "...", "dnis": "...", "caller": "...", "uuid": "...", "rate": 8000}`` (every key
optional) or a bare dialed number. Order: the ``robot`` key when it names a robot; else the dialed
number among the robots' ``phone_numbers`` (config.json wins, as everywhere in robot config), then
``VP_FS_ROUTES``; else ``VP_FS_DEFAULT_ROBOT``. Numbers compare by their digits only, so
``+7 (999) 000-11-22`` matches ``79990001122``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import structlog

from voiceplatform.config import RobotConfig, RobotConfigError, RobotRegistry

log = structlog.get_logger("vp_gateway_fs.routing")

RATES = (8000, 16000)


class RoutingError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # metric label


@dataclass(frozen=True)
class StreamMeta:
    robot: str = ""
    dnis: str = ""
    caller: str = ""
    uuid: str = ""
    rate: int | None = None
    present: bool = True  # False: the stream started with audio, not metadata


NO_METADATA = StreamMeta(present=False)


def parse_metadata(text: str) -> StreamMeta:
    """Read the metadata frame; raises ``RoutingError("bad_metadata")`` for anything unusable."""
    text = text.strip()
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError:
        value = text if _digits(text) and len(text) <= 32 and "{" not in text else None
    if isinstance(value, int | str) and not isinstance(value, bool) and _digits(str(value)):
        return StreamMeta(dnis=str(value).strip())
    if not isinstance(value, dict):
        raise RoutingError("bad_metadata", "metadata must be a JSON object or a dialed number")

    def text_of(*keys: str) -> str:
        for key in keys:
            item = value.get(key)
            if isinstance(item, str | int) and not isinstance(item, bool):
                return str(item).strip()[:64]
        return ""

    rate_text = text_of("rate", "sample_rate")
    rate = int(rate_text) if rate_text.isdigit() else None
    if rate_text and rate not in RATES:
        raise RoutingError("bad_metadata", f"metadata rate {rate_text!r} is not 8000 or 16000")
    return StreamMeta(
        robot=text_of("robot"),
        dnis=text_of("dnis", "destination", "destination_number"),
        caller=text_of("caller", "caller_id_number", "ani"),
        uuid=text_of("uuid"),
        rate=rate,
    )


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


class RobotRouter:
    def __init__(self, registry: RobotRegistry, routes: dict[str, str], default_robot: str = "") -> None:
        self.registry = registry
        self.routes = {_digits(k): v for k, v in routes.items() if _digits(k)}
        self.default_robot = default_robot

    def _load(self, name: str) -> RobotConfig | None:
        try:
            return self.registry.get(name)
        except RobotConfigError as exc:
            log.warning("routing.robot_unusable", robot=name, error=str(exc)[:200])
            return None

    def by_number(self, dnis: str) -> str | None:
        wanted = _digits(dnis)
        if not wanted:
            return None
        owners = []
        for name in self.registry.names():
            robot = self._load(name)
            if robot is not None and wanted in {_digits(n) for n in robot.settings.phone_numbers}:
                owners.append(robot.name)
        if len(owners) > 1:
            log.warning("routing.number_claimed_twice", robots=owners, chosen=owners[0])
        if owners:
            return owners[0]
        return self.routes.get(wanted)

    def route(self, meta: StreamMeta) -> tuple[RobotConfig, str]:
        """The robot for this stream and how it was chosen (``robot``/``number``/``default``)."""
        if meta.robot:
            if meta.robot in self.registry.names():
                try:
                    return self.registry.get(meta.robot, new_call=True), "robot"
                except RobotConfigError as exc:  # refused by its checks: the cause, not another robot
                    raise RoutingError("bad_robot", str(exc)) from None
            log.warning("routing.unknown_robot_key", robot=meta.robot[:64])
        name = self.by_number(meta.dnis) if meta.dnis else None
        how = "number"
        if name is None:
            name, how = self.default_robot, "default"
        if not name:
            raise RoutingError(
                "no_route", f"no robot for number {meta.dnis or '(none)'} and no VP_FS_DEFAULT_ROBOT"
            )
        try:
            return self.registry.get(name, new_call=True), how
        except RobotConfigError as exc:
            raise RoutingError("bad_robot", str(exc)) from None
