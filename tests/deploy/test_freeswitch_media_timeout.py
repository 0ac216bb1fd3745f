"""RTP inactivity timeouts the way FreeSWITCH 1.10 takes them: not the sofia profile's rtp-timeout-sec /
rtp-hold-timeout-sec (deprecated: mod_sofia logs a warning for each), but the channel variables
media_timeout / media_hold_timeout (milliseconds), set on every call before its RTP starts (answer).
The dialplan is run through a small emulation of mod_dialplan_xml's hunting (conditions in order, an
extension with continue="true" lets hunting go on), after the pre-processor emulation of
test_compose_freeswitch."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.deploy.test_compose_freeswitch import CONF, preprocess

ENV = {"VP_FS_ESL_PASSWORD": "s3cret-esl-pass", "VP_FS_STREAM_SECRET": "stream-key-of-the-deploy-tests"}
DEPRECATED = ("rtp-timeout-sec", "rtp-hold-timeout-sec", "rtp_timeout_sec", "rtp_hold_timeout_sec")


def _field_value(field: str, number: str, variables: dict[str, str]) -> str:
    if field == "destination_number":
        return number
    match = re.fullmatch(r"\$\{(\w+)\}", field)
    assert match, field
    return variables.get(match[1], "")


def hunt(root: ET.Element, number: str, variables: dict[str, str]) -> list[tuple[str, str]]:
    """The actions FreeSWITCH would queue for a call to ``number`` in the ``default`` context."""
    context = root.find(".//section[@name='dialplan']/context[@name='default']")
    assert context is not None
    queued: list[tuple[str, str]] = []
    for extension in context.findall("extension"):
        conditions = extension.findall("condition")
        captured: re.Match[str] | None = None
        matched = True
        for condition in conditions:
            value = _field_value(condition.get("field", ""), number, variables)
            found = re.search(condition.get("expression", ""), value)
            if found is None:
                matched = False
                break
            captured = found
        if not matched:
            continue
        for condition in conditions:
            for action in condition.findall("action"):
                data = action.get("data") or ""
                if captured is not None:
                    data = re.sub(r"\$(\d)", lambda m: captured[int(m[1])] or "", data)  # noqa: B023
                queued.append((action.get("application", ""), data))
        if extension.get("continue") != "true":
            break
    return queued


def _set_value(actions: list[tuple[str, str]], name: str) -> tuple[int, str]:
    found = [
        (i, data.partition("=")[2])
        for i, (app, data) in enumerate(actions)
        if app == "set" and data.startswith(f"{name}=")
    ]
    assert len(found) == 1, (name, actions)
    return found[0]


def test_no_deprecated_rtp_timeout_settings_anywhere_in_the_configuration() -> None:
    for path in sorted(CONF.rglob("*.xml")):
        text = path.read_text()
        for line in text.splitlines():
            if "<param" in line or "data=" in line:
                assert not any(name in line for name in DEPRECATED), f"{path}: {line.strip()}"
    root, _ = preprocess(ENV)
    profile = root.find(".//configuration[@name='sofia.conf']/profiles/profile[@name='internal']")
    assert profile is not None
    names = {p.get("name") for p in profile.iter("param")}
    assert not names & set(DEPRECATED)


@pytest.mark.parametrize(("bridge", "first_app"), [("xml", "answer"), ("lua", "lua")])
def test_every_call_gets_media_timeouts_in_ms_before_its_rtp_starts(bridge: str, first_app: str) -> None:
    root, variables = preprocess({**ENV, "VP_FS_ROBOT_BRIDGE": bridge})
    for number in ("7000", "+79991234567"):
        actions = hunt(root, number, variables)
        apps = [app for app, _ in actions]
        assert first_app in apps, actions
        starts_rtp = apps.index(first_app)  # answer, or the Lua script that answers
        at, timeout = _set_value(actions, "media_timeout")
        hold_at, hold = _set_value(actions, "media_hold_timeout")
        assert at < starts_rtp and hold_at < starts_rtp
        # milliseconds, not the deprecated settings' seconds: 5 minutes, and 30 minutes on hold
        assert (int(timeout), int(hold)) == (300_000, 1_800_000)
    # the robot's own extension still follows (hunting continues past the timeouts)
    assert ("park", "") in hunt(preprocess(ENV)[0], "7000", preprocess(ENV)[1])
