"""The API commands the peer answers (``api``/``bgapi``), with FreeSWITCH's output strings.

mod_commands and mod_audio_stream's ``uuid_audio_stream`` (docs/protocols/freeswitch.md). Arguments
are split like ``switch_separate_string``. An empty output becomes ``-ERR no reply`` on the socket,
an unknown command ``-ERR <cmd> Command not found!`` (mod_event_socket's ``api_exec``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from voiceplatform_devstack.freeswitch_call import PeerCall
from voiceplatform_devstack.freeswitch_channel import cause_name
from voiceplatform_devstack.freeswitch_wire import separate_string, serialize_plain

STREAM_USAGE = (
    "-USAGE: <uuid> [start | stop | send_text | pause | resume | graceful-shutdown ] [wss-url | path]"
    " [mono | mixed | stereo] [8000 | 16000] [metadata]\n"
)
WS_URI = re.compile(r"^wss?://[A-Za-z0-9.\-]+(:[0-9]*)?(/.*)?$")


class ApiHost(Protocol):
    hostname: str
    started_at: float
    sessions_since_start: int

    def locate(self, uuid: str) -> PeerCall | None: ...
    def live_calls(self) -> list[PeerCall]: ...


ApiFunction = Callable[[ApiHost, str], Awaitable[str]]


async def uuid_broadcast(host: ApiHost, arg: str) -> str:
    argv = separate_string(arg, 4)
    if len(argv) < 2:
        return "-USAGE: <uuid> <path> [aleg|bleg|holdb|both]\n"
    call = host.locate(argv[0])
    if call is None:
        return "-ERR invalid uuid\n"
    legs = argv[2].lower() if len(argv) > 2 else "aleg"
    if "aleg" in legs or "both" in legs:  # bleg/holdb alone: the caller (A leg) hears nothing
        call.player.broadcast(argv[1])
    return "+OK Message sent\n"


async def uuid_break(host: ApiHost, arg: str) -> str:
    if not arg:
        return "-USAGE: <uuid> [all]\n"
    uuid, _, flag = arg.partition(" ")
    call = host.locate(uuid)
    if call is None:
        return "-ERR No such channel!\n"
    call.break_playback("all" in flag)
    return "+OK\n"


async def uuid_kill(host: ApiHost, arg: str) -> str:
    if not arg:
        return "-USAGE: <uuid> [cause]\n"
    uuid, _, cause = arg.partition(" ")
    call = host.locate(uuid)
    if call is None:
        return "-ERR No such channel!\n"
    call.begin_hangup(cause_name(cause) if cause else "NORMAL_CLEARING")
    return "+OK\n"


async def uuid_transfer(host: ApiHost, arg: str) -> str:
    argv = separate_string(arg, 5)
    if not 2 <= len(argv) <= 5:
        return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
    call = host.locate(argv[0])
    if call is None:
        return "-ERR No such channel!\n"
    dest = argv[1]
    if dest.startswith("-"):
        dest = argv[2] if len(argv) > 2 else ""
    if not dest:
        return "-ERR\n"
    call.transfer(dest)
    return "+OK\n"


async def uuid_record(host: ApiHost, arg: str) -> str:
    usage = "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"
    argv = separate_string(arg, 5)
    if len(argv) < 3 or not all(argv[:3]):
        return usage
    call = host.locate(argv[0])
    if call is None:
        return "-ERR Cannot locate session!\n"
    action, path = argv[1].lower(), argv[2]
    if action == "start":
        limit = int(argv[3]) if len(argv) > 3 and argv[3].isdigit() else 0
        return "+OK Success\n" if call.record_start(path, limit) else "-ERR Cannot record session!\n"
    if action == "stop":
        return "+OK Success\n" if call.record_stop(path) else "-ERR Cannot stop record session!\n"
    if action in ("mask", "unmask", "pause", "resume"):
        return "+OK Success\n"
    return usage


async def uuid_exists(host: ApiHost, arg: str) -> str:
    return "true" if arg and host.locate(arg) is not None else "false"


async def uuid_dump(host: ApiHost, arg: str) -> str:
    """A CHANNEL_DATA event of the channel, serialized as plain events are (URL-encoded values)."""
    argv = separate_string(arg, 2)
    call = host.locate(argv[0]) if argv else None
    if call is None:
        return "-ERR No such channel!\n"
    return serialize_plain(call.host.make_event("CHANNEL_DATA", call.channel_data())).decode("utf-8")


async def uuid_answer(host: ApiHost, arg: str) -> str:
    call = host.locate(arg) if arg else None
    if call is None:
        return "-ERROR\n"
    call.answer_in_background()
    return "+OK\n"


async def uuid_send_dtmf(host: ApiHost, arg: str) -> str:
    argv = separate_string(arg, 2)
    if len(argv) < 2 or not argv[0] or not argv[1]:
        return "-USAGE: <uuid> <dtmf_data>\n"
    call = host.locate(argv[0])
    if call is None:
        return "-ERR Cannot locate session!\n"
    call.dtmf_sent.append(argv[1])
    return "+OK Success\n"


async def uuid_setvar(host: ApiHost, arg: str) -> str:
    argv = separate_string(arg, 3)
    if len(argv) < 2 or not argv[1]:
        return "-USAGE: <uuid> <var> [value]\n"
    call = host.locate(argv[0])
    if call is None:
        return "-ERR No such channel!\n"
    if len(argv) > 2:
        call.variables[argv[1]] = argv[2]
    else:
        call.variables.pop(argv[1], None)
    return "+OK\n"


async def uuid_getvar(host: ApiHost, arg: str) -> str:
    argv = separate_string(arg, 2)
    if len(argv) < 2:
        return "-USAGE: <uuid> <var>\n"
    call = host.locate(argv[0])
    if call is None:
        return "-ERR No such channel!\n"
    return call.variables.get(argv[1], "_undef_")


async def uuid_park(host: ApiHost, arg: str) -> str:
    return "+OK\n" if arg and host.locate(arg) is not None else "-ERR No such channel!\n"


async def uuid_audio_stream(host: ApiHost, arg: str) -> str:
    argv = separate_string(arg, 6)
    if len(argv) < 2 or (argv[1] == "start" and len(argv) < 4):
        return STREAM_USAGE
    call = host.locate(argv[0])
    if call is None:
        return "-ERR Operation Failed\n"
    action, ok = argv[1].lower(), False
    if action == "stop":
        ok = await call.stop_stream(argv[2] if len(argv) > 2 else None)
    elif action in ("pause", "resume"):
        if call.stream is not None:
            call.stream.paused = action == "pause"
            ok = True
    elif action == "send_text":
        if len(argv) < 3:
            return ""  # mod_audio_stream writes nothing here: the socket says "-ERR no reply"
        if call.stream is not None:
            await call.stream.send(argv[2])
            ok = True
    elif action == "start":
        if argv[3] not in ("mono", "mixed", "stereo"):
            return ""
        rate_arg = argv[4] if len(argv) > 4 else "8k"
        rate = {"8k": 8000, "16k": 16000}.get(rate_arg) or _atoi(rate_arg)
        if WS_URI.match(argv[2]) and rate > 0 and rate % 8000 == 0:
            stream = call.attach_stream(argv[2], argv[3], rate, argv[5] if len(argv) > 5 else None)
            if stream is not None:
                call.spawn(stream.connect(), "stream-connect")
                ok = True
    return "+OK Success\n" if ok else "-ERR Operation Failed\n"


async def status(host: ApiHost, arg: str) -> str:
    up = time.monotonic() - host.started_at
    days, rest = divmod(up, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    ms = (seconds - int(seconds)) * 1000
    live = len(host.live_calls())
    return (
        f"UP 0 years, {int(days)} days, {int(hours)} hours, {int(minutes)} minutes, {int(seconds)} seconds, "
        f"{int(ms)} milliseconds, {int((ms - int(ms)) * 1000)} microseconds\n"
        "FreeSWITCH (Version 1.10.12-release 64bit) is ready\n"
        f"{host.sessions_since_start} session(s) since startup\n"
        f"{live} session(s) - peak {live}, last 5min {live} \n"
        "0 session(s) per Sec out of max 30, peak 0, last 5min 0 \n"
        "1000 session(s) max\nmin idle cpu 0.00/99.00\nCurrent Stack Size/Max 240K/8192K\n"
    )


async def show(host: ApiHost, arg: str) -> str:
    words = arg.split()
    if not words or words[0] not in ("channels", "calls"):
        return "-USAGE: show channels|calls [as json]\n"
    rows = [
        {
            "uuid": c.uuid,
            "direction": "inbound",
            "created_epoch": str(c.created_us // 1_000_000),
            "name": f"sofia/internal/{c.caller}@127.0.0.1",
            "state": "CS_EXECUTE",
            "cid_num": c.caller,
            "dest": c.destination,
            "callstate": "ACTIVE" if c.state == "answered" else "RINGING",
        }
        for c in host.live_calls()
    ]
    if words[-2:] == ["as", "json"]:
        return json.dumps({"row_count": len(rows), "rows": rows} if rows else {"row_count": 0}) + "\n"
    header = "uuid,direction,created_epoch,name,state,cid_num,dest,callstate"
    lines = [",".join(row.values()) for row in rows]
    return "\n".join([header, *lines, "", f"{len(rows)} total.", ""])


async def hostname(host: ApiHost, arg: str) -> str:
    return host.hostname


async def version(host: ApiHost, arg: str) -> str:
    return "FreeSWITCH Version 1.10.12-release~64bit (voice-platform peer)\n"


def _atoi(text: str) -> int:
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


COMMANDS: dict[str, ApiFunction] = {
    "uuid_broadcast": uuid_broadcast,
    "uuid_break": uuid_break,
    "uuid_kill": uuid_kill,
    "uuid_transfer": uuid_transfer,
    "uuid_record": uuid_record,
    "uuid_exists": uuid_exists,
    "uuid_dump": uuid_dump,
    "uuid_answer": uuid_answer,
    "uuid_send_dtmf": uuid_send_dtmf,
    "uuid_setvar": uuid_setvar,
    "uuid_getvar": uuid_getvar,
    "uuid_park": uuid_park,
    "uuid_audio_stream": uuid_audio_stream,
    "status": status,
    "show": show,
    "hostname": hostname,
    "version": version,
}
