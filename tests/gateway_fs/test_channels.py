"""The registry of announced channels: facts from events, hangups, bounds, uuid_dump answers."""

from __future__ import annotations

from urllib.parse import quote

from vp_gateway_fs.channels import ChannelRegistry
from vp_gateway_fs.esl_frames import EslEvent


def event(name: str, uuid: str, **headers: str) -> EslEvent:
    return EslEvent({"Event-Name": name, "Unique-ID": uuid, **headers})


def test_facts_come_from_the_channel_events_and_a_hangup_ends_them() -> None:
    reg = ChannelRegistry()
    reg.on_event(event("CHANNEL_CREATE", "a", **{"Caller-Caller-ID-Number": "100"}))
    answer = {"Caller-Caller-ID-Number": "100", "Caller-Destination-Number": "7000"}
    answer["Answer-State"] = "answered"
    reg.on_event(event("CHANNEL_ANSWER", "a", **answer, variable_vp_robot="bot"))
    facts = reg.live("a")
    assert facts is not None and (facts.caller, facts.destination, facts.answered) == ("100", "7000", True)
    assert facts.variables == {"vp_robot": "bot"}
    reg.on_event(event("HEARTBEAT", ""))  # not a channel event: ignored
    reg.on_event(event("CHANNEL_HANGUP", "a"))
    assert reg.live("a") is None and reg.ended("a")
    reg.on_event(event("CUSTOM", "a", **{"Caller-Destination-Number": "7000"}))  # late: stays ended
    assert reg.live("a") is None and reg.ended("a")


def test_the_registry_is_bounded() -> None:
    reg = ChannelRegistry(max_channels=3)
    for n in range(5):
        reg.on_event(event("CHANNEL_CREATE", f"c{n}"))
    assert len(reg) == 3 and reg.live("c0") is None and reg.live("c4") is not None
    many = {f"variable_v{n}": "x" * 1000 for n in range(200)}
    reg.on_event(event("CHANNEL_CREATE", "big", **many))
    facts = reg.live("big")
    assert facts is not None and len(facts.variables) == 64
    assert {len(v) for v in facts.variables.values()} == {256}


def test_uuid_dump_output_is_read_like_an_event() -> None:
    reg = ChannelRegistry()
    dump = "".join(
        f"{k}: {quote(v)}\n"
        for k, v in {
            "Event-Name": "CHANNEL_DATA",
            "Unique-ID": "d",
            "Caller-Caller-ID-Number": "+7 999",
            "Caller-Destination-Number": "7001",
        }.items()
    )
    facts = reg.learn_from_dump("d", dump)
    assert facts is not None and (facts.caller, facts.destination) == ("+7 999", "7001")
    assert reg.live("d") == facts
    assert reg.learn_from_dump("e", "-ERR No such channel!\n") is None
    assert reg.learn_from_dump("e", dump) is None  # the dump of another channel proves nothing
