"""Channel facts as FreeSWITCH writes them into events (``switch_channel_event_set_data``) and causes.

Every channel event carries these headers before its own (``Hangup-Cause``, ``Playback-Status``,
...): ``Unique-ID``, ``Channel-Call-UUID``, ``Caller-Destination-Number``,
``Caller-Caller-ID-Number``, the channel and answer states, the codec, ``variable_*``.
"""

from __future__ import annotations

from typing import Protocol

from voiceplatform_devstack.freeswitch_wire import names

HANGUP_CAUSES = names(
    """NONE UNALLOCATED_NUMBER NO_ROUTE_TRANSIT_NET NO_ROUTE_DESTINATION CHANNEL_UNACCEPTABLE
    CALL_AWARDED_DELIVERED NORMAL_CLEARING USER_BUSY NO_USER_RESPONSE NO_ANSWER SUBSCRIBER_ABSENT
    CALL_REJECTED NUMBER_CHANGED REDIRECTION_TO_NEW_DESTINATION EXCHANGE_ROUTING_ERROR
    DESTINATION_OUT_OF_ORDER INVALID_NUMBER_FORMAT FACILITY_REJECTED RESPONSE_TO_STATUS_ENQUIRY
    NORMAL_UNSPECIFIED NORMAL_CIRCUIT_CONGESTION NETWORK_OUT_OF_ORDER NORMAL_TEMPORARY_FAILURE
    SWITCH_CONGESTION ACCESS_INFO_DISCARDED REQUESTED_CHAN_UNAVAIL BEARERCAPABILITY_NOTAUTH
    BEARERCAPABILITY_NOTAVAIL SERVICE_UNAVAILABLE BEARERCAPABILITY_NOTIMPL CHAN_NOT_IMPLEMENTED
    FACILITY_NOT_IMPLEMENTED SERVICE_NOT_IMPLEMENTED INVALID_CALL_REFERENCE INCOMPATIBLE_DESTINATION
    INVALID_MSG_UNSPECIFIED MANDATORY_IE_MISSING MESSAGE_TYPE_NONEXIST WRONG_MESSAGE IE_NONEXIST
    INVALID_IE_CONTENTS WRONG_CALL_STATE RECOVERY_ON_TIMER_EXPIRE MANDATORY_IE_LENGTH_ERROR
    PROTOCOL_ERROR INTERWORKING ORIGINATOR_CANCEL CRASH SYSTEM_SHUTDOWN LOSE_RACE MANAGER_REQUEST
    BLIND_TRANSFER ATTENDED_TRANSFER ALLOTTED_TIMEOUT USER_CHALLENGE MEDIA_TIMEOUT PICKED_OFF
    USER_NOT_REGISTERED PROGRESS_TIMEOUT GATEWAY_DOWN"""
)
Q850 = {"16": "NORMAL_CLEARING", "17": "USER_BUSY", "19": "NO_ANSWER", "21": "CALL_REJECTED"}
Q850 |= {"31": "NORMAL_UNSPECIFIED", "41": "NORMAL_TEMPORARY_FAILURE"}


def cause_name(text: str) -> str:
    """``switch_channel_str2cause``: a known name (any case) or a Q.850 number, else NONE."""
    upper = text.strip().upper()
    return upper if upper in HANGUP_CAUSES else Q850.get(upper, "NONE")


class ChannelInfo(Protocol):
    uuid: str
    caller: str
    destination: str
    rate: int
    state: str
    created_us: int
    answered_us: int
    hangup_us: int
    hangup_cause: str
    variables: dict[str, str]


def channel_data(call: ChannelInfo) -> list[tuple[str, str]]:
    state, number, call_state = {
        "ringing": ("CS_EXECUTE", "4", "RINGING"),
        "answered": ("CS_EXECUTE", "4", "ACTIVE"),
    }.get(call.state, ("CS_HANGUP", "10", "HANGUP"))
    answer_state = {"ringing": "ringing", "answered": "answered"}.get(call.state, "hangup")
    codec = "PCMU" if call.rate == 8000 else "L16"
    name = f"sofia/internal/{call.caller}@127.0.0.1"
    data = [
        ("Channel-State", state),
        ("Channel-Call-State", call_state),
        ("Channel-State-Number", number),
        ("Channel-Name", name),
        ("Unique-ID", call.uuid),
        ("Call-Direction", "inbound"),
        ("Presence-Call-Direction", "inbound"),
        ("Channel-HIT-Dialplan", "true"),
        ("Channel-Call-UUID", call.uuid),
        ("Answer-State", answer_state),
        ("Channel-Read-Codec-Name", codec),
        ("Channel-Read-Codec-Rate", str(call.rate)),
        ("Channel-Read-Codec-Bit-Rate", str(call.rate * 8 if codec == "PCMU" else call.rate * 16)),
        ("Channel-Write-Codec-Name", codec),
        ("Channel-Write-Codec-Rate", str(call.rate)),
        ("Channel-Write-Codec-Bit-Rate", str(call.rate * 8 if codec == "PCMU" else call.rate * 16)),
        ("Caller-Direction", "inbound"),
        ("Caller-Logical-Direction", "inbound"),
        ("Caller-Username", call.caller),
        ("Caller-Dialplan", "XML"),
        ("Caller-Caller-ID-Name", call.caller),
        ("Caller-Caller-ID-Number", call.caller),
        ("Caller-Orig-Caller-ID-Name", call.caller),
        ("Caller-Orig-Caller-ID-Number", call.caller),
        ("Caller-Network-Addr", "127.0.0.1"),
        ("Caller-ANI", call.caller),
        ("Caller-Destination-Number", call.destination),
        ("Caller-Unique-ID", call.uuid),
        ("Caller-Source", "mod_sofia"),
        ("Caller-Context", "public"),
        ("Caller-Channel-Name", name),
        ("Caller-Profile-Index", "1"),
        ("Caller-Profile-Created-Time", str(call.created_us)),
        ("Caller-Channel-Created-Time", str(call.created_us)),
        ("Caller-Channel-Answered-Time", str(call.answered_us)),
        ("Caller-Channel-Hangup-Time", str(call.hangup_us)),
        ("variable_direction", "inbound"),
        ("variable_uuid", call.uuid),
        ("variable_call_uuid", call.uuid),
        ("variable_channel_name", name),
    ]
    data += [(f"variable_{k}", v) for k, v in call.variables.items()]
    if call.hangup_cause:
        data.append(("variable_hangup_cause", call.hangup_cause))
    return data
