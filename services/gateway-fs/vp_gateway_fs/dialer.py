"""Outbound campaigns: calls placed through FreeSWITCH's Event Socket, one ``bgapi originate`` each.

    bgapi originate {origination_uuid=<uuid>,originate_timeout=<s>,ignore_early_media=true,
        STREAM_BUFFER_SIZE=20,STREAM_SUPPRESS_LOG=true,park_timeout=3600,
        origination_caller_id_number=<cid>,vp_robot=<robot>,vp_campaign=<id>,vp_attempt=<n>,
        vp_var_<name>=<percent-encoded value>,...}sofia/gateway/<gateway>/<number> &park()

``bgapi``, not ``api``: ``api originate`` holds the ESL connection until the callee answers, and
every call shares that connection. The channel uuid is ours (``origination_uuid``), so its events
are known from the first. On ``CHANNEL_ANSWER`` the gateway starts mod_audio_stream itself
(``uuid_audio_stream <uuid> start <VP_FS_STREAM_URL>/<uuid>?key=... mono 8k <metadata>``): the
stream, routing (``vp_robot``) and the call then run as for an inbound call, with the greeting held
for answering-machine detection (amd_watch.py), so nothing is played before the callee answered.
Variable values are percent-encoded: no comma, quote or brace of a value can break the dial string.

The attempt's outcome comes from the ``BACKGROUND_JOB`` (``+OK <uuid>`` or ``-ERR <cause>``) or the
channel's hangup, whichever is first; a job that never reports is failed after the originate
timeout plus ``JOB_GRACE_S``. Each outcome is published as ``call.dialed`` on the call id the stream
has (or would have had): ``phone-<uuid>``; the recorder keeps it with the call's events. An attempt
that was not answered has no stream to end its record: ``call.ended`` (reason ``dial_busy``,
``dial_no_answer``, ``dial_failed``) follows at once, so every number dialled has a closed record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import structlog
from prometheus_client import Counter, Gauge

from voiceplatform import subjects
from voiceplatform.outbound.amd import AmdConfig
from voiceplatform.outbound.campaign import Attempt, Campaign, Outcome, TargetState, outcome_of_cause
from voiceplatform.phone_stream import stream_url
from voiceplatform.runtime import TaskRegistry
from voiceplatform.wire import CallDialed, CallEnded
from vp_gateway_fs.esl import EslError, EslEvent

if TYPE_CHECKING:
    from vp_gateway_fs.app import GatewayFs

log = structlog.get_logger("vp_gateway_fs.dialer")
ATTEMPTS = Counter("vp_gateway_fs_dial_attempts_total", "Outbound attempts by outcome", ["outcome"])
IN_FLIGHT = Gauge("vp_gateway_fs_dial_in_flight", "Outbound attempts dialling or talking")
VAR_PREFIX = "vp_var_"
JOB_GRACE_S = 30.0
PARK_TIMEOUT_S = 3600
KEEP_FINISHED = 100  # finished campaigns whose report GET /outbound/campaigns/{id} still serves
_ORIGINATION_UUID = re.compile(r"origination_uuid=([A-Za-z0-9-]{8,64})")


@dataclass
class Leg:
    """One attempt in flight: the campaign's target and what FreeSWITCH said about it so far."""

    campaign: Campaign
    state: TargetState
    attempt: Attempt
    robot: str
    amd: AmdConfig
    answered: bool = False
    reported: bool = False  # call.dialed published
    done: bool = False


@dataclass
class CampaignRun:
    campaign: Campaign
    robot: str
    amd: AmdConfig
    caller_id: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def call_variables(channel_vars: dict[str, str]) -> dict[str, str]:
    """The per-call variables a dialled channel carries (``vp_var_<name>``, percent-encoded)."""
    return {k[len(VAR_PREFIX) :]: unquote(v) for k, v in channel_vars.items() if k.startswith(VAR_PREFIX)}


class Dialer:
    def __init__(self, gateway: GatewayFs, clock: Callable[[], float] = time.time) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.clock = clock
        self.runs: dict[str, CampaignRun] = {}
        self.legs: dict[str, Leg] = {}  # by channel uuid
        self._tasks = TaskRegistry()

    # ---- campaigns ---------------------------------------------------------------------------------
    def submit(self, campaign: Campaign, *, robot: str, amd: AmdConfig, caller_id: str = "") -> CampaignRun:
        if campaign.id in self.runs:
            raise ValueError(f"campaign {campaign.id!r} exists")
        finished = [key for key, run in self.runs.items() if run.campaign.finished]
        for key in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
            del self.runs[key]  # bounded: the oldest finished campaigns' reports are dropped
        run = CampaignRun(campaign, robot, amd, caller_id or self.settings.fs_dial_caller_id)
        self.runs[campaign.id] = run
        self._tasks.spawn(self._run(run), key="campaign", name=f"campaign-{campaign.id}")
        log.info("fs.campaign_started", campaign=campaign.id, numbers=len(campaign.states), robot=robot)
        return run

    def cancel(self, campaign_id: str) -> bool:
        run = self.runs.get(campaign_id)
        if run is None:
            return False
        run.campaign.cancelled = True
        run.wake.set()
        return True

    async def stop(self) -> None:
        for run in self.runs.values():
            run.campaign.cancelled = True
        await self._tasks.cancel_all(1.0)

    async def _run(self, run: CampaignRun) -> None:
        campaign = run.campaign
        while not campaign.finished:
            run.wake.clear()
            now = self.clock()
            room = self.settings.fs_dial_max_in_flight - len(self.legs)
            for state in campaign.due(now)[: max(room, 0)]:
                await self._dial(run, state)
            wakeup = campaign.next_wakeup(self.clock())
            full = (
                campaign.in_flight >= campaign.concurrency
                or len(self.legs) >= self.settings.fs_dial_max_in_flight
            )
            # full: an attempt ending wakes the loop (at the latest each second for the gateway-wide cap)
            timeout = 1.0 if wakeup is None or full else min(max(wakeup - self.clock(), 0.01), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.wake.wait(), timeout)
        log.info("fs.campaign_finished", campaign=campaign.id, cancelled=campaign.cancelled)

    async def _dial(self, run: CampaignRun, state: TargetState) -> None:
        campaign = run.campaign
        uuid = str(uuidlib.uuid4())
        attempt = campaign.started(state, uuid, self.clock())
        leg = Leg(campaign, state, attempt, run.robot, run.amd)
        self.legs[uuid] = leg
        IN_FLIGHT.set(len(self.legs))
        command = self.originate_command(run, state, attempt)
        try:
            reply = await self.gw.esl.command(f"bgapi {command}")
        except EslError as exc:
            log.error("fs.originate_failed", campaign=campaign.id, error=type(exc).__name__)
            await self._finish(leg, "failed", "ESL_UNAVAILABLE")
            return
        if not reply.ok:
            await self._finish(leg, "failed", reply.text[:40])
            return
        timeout = self.settings.fs_originate_timeout_s + JOB_GRACE_S
        self._tasks.spawn(self._job_deadline(uuid, timeout), key="deadline", name=f"dial-deadline-{uuid}")

    def originate_command(self, run: CampaignRun, state: TargetState, attempt: Attempt) -> str:
        s = self.settings
        variables = {
            "origination_uuid": attempt.uuid,
            "originate_timeout": str(int(s.fs_originate_timeout_s)),
            "ignore_early_media": "true",
            # what the inbound dialplan sets before its stream starts: 20 ms frames, quiet logs,
            # and the same one-hour safety net on the parked call
            "STREAM_BUFFER_SIZE": "20",
            "STREAM_SUPPRESS_LOG": "true",
            "park_timeout": str(PARK_TIMEOUT_S),
            "vp_robot": run.robot,
            "vp_campaign": run.campaign.id,
            "vp_attempt": str(attempt.number),
        }
        if run.caller_id:
            variables["origination_caller_id_number"] = run.caller_id
        for name, value in state.target.variables.items():
            variables[VAR_PREFIX + name] = quote(value, safe="")
        endpoint = s.fs_dial_endpoint.format(gateway=s.fs_dial_gateway, number=state.target.number)
        pairs = ",".join(f"{k}={v}" for k, v in variables.items())
        return f"originate {{{pairs}}}{endpoint} &park()"

    async def _job_deadline(self, uuid: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        leg = self.legs.get(uuid)
        if leg is not None and not leg.answered:
            await self._finish(leg, "failed", "NO_JOB_RESULT")

    # ---- from the ESL reader -------------------------------------------------------------------------
    def on_event(self, event: EslEvent) -> None:
        if event.name == "BACKGROUND_JOB":
            found = _ORIGINATION_UUID.search(event.headers.get("Job-Command-Arg", ""))
            leg = self.legs.get(found.group(1)) if found else None
            if leg is not None:
                self._tasks.spawn(self._job_result(leg, event.body), key="job", name="dial-job")
            return
        leg = self.legs.get(event.uuid)
        if leg is None:
            return
        if event.name == "CHANNEL_ANSWER" and not leg.answered:
            leg.answered = True
            self._tasks.spawn(self._answered(leg), key="answer", name=f"dial-answer-{event.uuid}")
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            if leg.answered:
                self._tasks.spawn(self._finish(leg, "answered", ""), key="end", name="dial-end")
            else:
                cause = event.headers.get("Hangup-Cause", "")
                ending = self._finish(leg, outcome_of_cause(cause), cause)
                self._tasks.spawn(ending, key="end", name="dial-end")

    async def _job_result(self, leg: Leg, body: str) -> None:
        text = body.strip()
        if text.startswith("+OK"):
            leg.answered = True
            await self._report(leg, "answered", "")
        elif not leg.answered:
            cause = text.removeprefix("-ERR").strip().split()[0] if text.startswith("-ERR") else ""
            await self._finish(leg, outcome_of_cause(cause), cause or text[:40])

    async def _answered(self, leg: Leg) -> None:
        """Start the stream now that the callee answered (nothing plays before this)."""
        uuid, s = leg.attempt.uuid, self.settings
        url = stream_url(s.fs_stream_url, uuid, s.fs_stream_secret.get_secret_value())
        meta = json.dumps({"dnis": leg.state.target.number, "rate": 8000}, separators=(",", ":"))
        try:
            reply = await self.gw.esl.api(f"uuid_audio_stream {uuid} start {url} mono 8k {meta}")
        except EslError as exc:
            log.error("fs.outbound_stream_failed", uuid=uuid, error=type(exc).__name__)
            reply = None
        if reply is None or not reply.ok:
            with contextlib.suppress(EslError):
                await self.gw.esl.api(f"uuid_kill {uuid} DESTINATION_OUT_OF_ORDER")
        await self._report(leg, "answered", "")

    async def _report(self, leg: Leg, outcome: Outcome, cause: str) -> None:
        if leg.reported:
            return
        leg.reported = True
        ATTEMPTS.labels(outcome).inc()
        bus = self.gw.bus
        if bus is None:
            return
        call_id = f"phone-{leg.attempt.uuid}"
        with contextlib.suppress(Exception):
            await bus.publish(
                subjects.lifecycle(call_id),
                CallDialed(
                    call_id=call_id,
                    campaign_id=leg.campaign.id,
                    number=leg.state.target.number,
                    attempt=leg.attempt.number,
                    outcome=outcome,
                    cause=cause,
                ),
            )
            if outcome != "answered":  # no stream will end this call id: its record is closed here
                await bus.publish(
                    subjects.lifecycle(call_id), CallEnded(call_id=call_id, reason=f"dial_{outcome}")
                )

    async def _finish(self, leg: Leg, outcome: Outcome, cause: str) -> None:
        if leg.done:
            return
        leg.done = True
        self.legs.pop(leg.attempt.uuid, None)
        IN_FLIGHT.set(len(self.legs))
        leg.campaign.ended(leg.state, outcome, self.clock(), cause)
        await self._report(leg, outcome, cause)
        log.info(
            "fs.dial_attempt",
            campaign=leg.campaign.id,
            attempt=leg.attempt.number,
            outcome=outcome,
            cause=cause,
        )
        run = self.runs.get(leg.campaign.id)
        if run is not None:
            run.wake.set()

    # ---- for the stream handler ------------------------------------------------------------------------
    def leg(self, uuid: str) -> Leg | None:
        return self.legs.get(uuid)

    def call_setup(self, uuid: str, channel_vars: dict[str, str]) -> tuple[dict[str, str], AmdConfig | None]:
        """An answered stream's per-call variables, and its AMD settings when it is one of our
        outbound calls (None: an inbound call, greeted at once)."""
        leg = self.legs.get(uuid)
        if leg is not None:
            return dict(leg.state.target.variables), leg.amd if leg.amd.enabled else None
        variables = call_variables(channel_vars)  # placed by another gateway, or set by the dialplan
        if "vp_campaign" in channel_vars:
            amd = AmdConfig()
            return variables, amd if amd.enabled else None
        return variables, None

    def note_amd(self, uuid: str, result: str) -> None:
        leg = self.legs.get(uuid)
        if leg is not None:
            leg.attempt.amd = result
