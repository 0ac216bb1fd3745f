"""Prompt-router: asr.final → (keywords, then meaning → prompt) → llm.request; state in NATS KV.

Also turns ``call.no_input`` (the caller stayed silent) into an ``llm.request`` with
``event="no_input"``, a keypad transcript (``asr.final`` with ``dtmf``) into one with
``event="dtmf"`` (the keys choose no topic), and takes a caller turn out of the history when its
interrupt says the words were continued in a later turn or were only a backchannel.

Stateless: all state lives in the ``vp_dialog`` KV bucket, changed by compare-and-set. The turn
requests (``asr`` and ``lifecycle``: call start/end, no-input) are work taken from the
``VP_CALL_EVENTS`` stream (``bus/work.py``): one taken by an instance that dies or hangs goes to
another; a retried turn neither repeats the caller's words in the history nor its ``llm.request``
(deduplicated by turn id in the ``VP_WORK`` stream). ``llm.done`` and ``control`` stay plain
queue-group subscriptions. Work is handed to a per-call queue, so it never waits on KV round trips
of another call, while one call's events keep their order within an instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client import Counter

from voiceplatform import load, metrics, subjects, tracing
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.bus.streams import CALL_EVENTS
from voiceplatform.bus.work import WorkSource, WorkSpec, check_still_ours, take_work
from voiceplatform.config import RobotConfig, RobotConfigError, RobotRegistry
from voiceplatform.logging import bind_call
from voiceplatform.outbound.template import fill
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallNoInput,
    CallStarted,
    ChatMessage,
    ControlInterrupt,
    LlmDone,
    LlmRequest,
    Message,
    PromptSwitched,
)
from vp_router.dialog_state import DialogConflict, DialogState, DialogStateError, DialogStore, Stored
from vp_router.routing import Route, RouteCache
from vp_router.settings import RouterSettings

log = structlog.get_logger("vp_router")

SERVICE = "prompt-router"
ROUTE_LATENCY = metrics.STAGE_LATENCY.labels(SERVICE, "router")
PROMPT_SWITCHES = Counter("vp_router_prompt_switches_total", "Prompt switches by robot", ["robot"])
ROUTER_DROPS = Counter("vp_router_dropped_total", "Router inputs not acted on, by reason", ["reason"])
MAX_PENDING_INTERRUPTS = 16
# call.started may be handled by another instance after the first asr.final reaches us: a moment
# later as a rule, or, when an instance took it and then lost its connection (a host cut off),
# only once the server hands it to another after the ack wait, twice in the worst case seen.
# So a missing state is looked for again every MISSING_STATE_RETRY_S for that long before the
# turn fails (the gateway's reply deadline, 6 s from the transcript, still leaves room to answer).
MISSING_STATE_RETRY_S = 0.05
MISSING_STATE_ACK_WAITS = 2.5


class CallQueue:
    """Work items of one call run one after another; different calls run concurrently."""

    def __init__(self, tasks: TaskRegistry) -> None:
        self._tasks = tasks
        self._tails: dict[str, asyncio.Task[Any]] = {}

    def submit(self, call_id: str, work: Callable[[], Awaitable[None]]) -> asyncio.Task[Any]:
        previous = self._tails.get(call_id)

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait({previous})
            await work()

        task = self._tasks.spawn(run(), key=call_id, name=f"router-{call_id}")
        self._tails[call_id] = task
        task.add_done_callback(lambda t: self._forget(call_id, t))
        return task

    async def run(self, call_id: str, work: Callable[[], Awaitable[None]]) -> None:
        """Queue ``work`` behind the call's earlier items and wait until it has run."""
        await asyncio.wait({self.submit(call_id, work)})

    def _forget(self, call_id: str, task: asyncio.Task[Any]) -> None:
        if self._tails.get(call_id) is task:
            del self._tails[call_id]


class RouterService:
    name = SERVICE

    def __init__(self, settings: RouterSettings, robots: RobotRegistry | None = None) -> None:
        self.settings = settings
        self.robots = robots or RobotRegistry(settings.robots_dir)
        self.routes = RouteCache()
        self._bus: Bus | None = None
        self._store: DialogStore | None = None
        self._tasks = TaskRegistry()
        self._queue = CallQueue(self._tasks)
        self._subs: list[Subscription] = []
        self._work: list[WorkSource] = []
        self._draining = False

    # ---- Service ------------------------------------------------------------------------------
    async def start(self, bus: Bus) -> None:
        self._bus = bus
        self._store = await DialogStore.open(bus, self.settings.dialog_ttl_s, self.settings.stored_history)
        for name in self.robots.names():
            # compile every robot's routes now: topic examples get embedded before the first call
            try:
                self.routes.get(self.robots.get(name))
            except RobotConfigError as exc:
                log.warning("router.robot_unavailable", robot=name, problems=exc.problems)
        group = subjects.queue_group(SERVICE)
        for subject, handler in (
            (subjects.ANY_CONTROL, self._on_control),
            (subjects.ANY_LLM_DONE, self._on_llm_done),
        ):
            self._subs.append(await bus.subscribe(subject, handler, queue=group))
        s = self.settings
        for name, subject, work, takes in (
            ("lifecycle", subjects.ANY_LIFECYCLE, self._on_lifecycle, (CallStarted, CallEnded, CallNoInput)),
            ("asr", subjects.ANY_ASR, self._on_asr, (AsrFinal,)),
        ):
            spec = WorkSpec.of(CALL_EVENTS, f"{SERVICE}-{name}", subject, s, stage=SERVICE, takes=takes)
            self._work.append(await take_work(bus, spec, work, self._exhausted))

    async def drain(self, timeout: float) -> None:
        self._draining = True
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        await asyncio.gather(*(work.stop(timeout) for work in self._work))
        self._work.clear()
        if not await self._tasks.wait_all(timeout):
            await self._tasks.cancel_all()

    def ready(self) -> bool:
        return self._store is not None and not self._draining

    def health(self) -> dict[str, Any]:
        return {"tasks_in_flight": len(self._tasks)}

    def asgi_app(self) -> None:
        return None

    @property
    def store(self) -> DialogStore:
        assert self._store is not None, "service not started"
        return self._store

    async def _publish(self, subject: str, msg: Message, msg_id: str = "") -> None:
        assert self._bus is not None
        check_still_ours()  # a turn request whose lease ran out (we stalled) is another's now
        await self._bus.publish(subject, msg, msg_id)

    async def _stage_error(self, call_id: str, turn_id: str, kind: str, detail: str, retryable: bool) -> None:
        ROUTER_DROPS.labels(kind).inc()
        log.warning("router.stage_error", kind=kind, detail=detail[:300])
        assert self._bus is not None
        await publish_stage_error(
            self._bus,
            call_id=call_id,
            stage="router",
            kind=kind,
            detail=detail,
            turn_id=turn_id,
            retryable=retryable,
        )

    # ---- work and subscriptions: hand it to the call's queue ------------------------------------
    async def _on_lifecycle(self, env: Envelope, attempt: int = 1) -> None:
        msg = env.message
        if isinstance(msg, CallStarted):
            # not behind the call's queue: a transcript that came first waits there for this state
            await self._call_started(msg)
        elif isinstance(msg, CallEnded):
            await self._queue.run(msg.call_id, lambda: self._call_ended(msg))
        elif isinstance(msg, CallNoInput):
            await self._queue.run(msg.call_id, lambda: self._no_input(msg))

    async def _on_asr(self, env: Envelope, attempt: int = 1) -> None:
        msg = env.message
        if isinstance(msg, AsrFinal):
            if not msg.route:
                return  # a realtime model answers this call itself
            if not msg.text.strip():
                ROUTER_DROPS.labels("empty_text").inc()
                return
            received = time.perf_counter()
            await self._queue.run(msg.call_id, lambda: self._user_said(msg, received))

    async def _exhausted(self, env: Envelope) -> None:
        """No instance finished this turn request in its deliveries: say so on the call's record."""
        msg = env.message
        if isinstance(msg, AsrFinal | CallNoInput):
            detail = "no router instance finished the turn"
            await self._stage_error(msg.call_id, msg.turn_id, "worker_lost", detail, False)

    async def _on_llm_done(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, LlmDone):
            self._queue.submit(msg.call_id, lambda: self._bot_said(msg))
        return None

    async def _on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlInterrupt):
            self._queue.submit(msg.call_id, lambda: self._interrupted(msg))
        return None

    # ---- work ---------------------------------------------------------------------------------
    async def _call_started(self, msg: CallStarted) -> None:
        with bind_call(call_id=msg.call_id):
            try:
                robot = self.robots.get(msg.robot)
            except RobotConfigError as exc:
                await self._stage_error(msg.call_id, "", "robot_config", str(exc), False)
                return
            state = DialogState(
                call_id=msg.call_id,
                robot=robot.name,
                channel=msg.channel,
                sample_rate=msg.sample_rate,
                prompt_id=robot.settings.router.default_prompt,
                variables=dict(msg.variables),
            )
            created = await self.store.create(state)
            log.info("router.call_started", robot=robot.name, prompt_id=state.prompt_id, created=created)

    async def _call_ended(self, msg: CallEnded) -> None:
        await self.store.delete(msg.call_id)
        log.info("router.call_ended", call_id=msg.call_id)

    async def _classify(self, call_id: str, text: str) -> tuple[Route | None, Stored | None]:
        """The topic of ``text`` for this call's robot (before the state changes: it may await),
        and the state it was read from (the change starts from it: no KV read at all when this
        instance has the call's state, which it does unless another changed the call since)."""
        stored = self.store.remembered(call_id) or await self.store.read(call_id)
        if stored is None:
            waited_for = MISSING_STATE_ACK_WAITS * self.settings.work_ack_wait_s
            give_up = time.monotonic() + waited_for
            pause = MISSING_STATE_RETRY_S
            while stored is None and time.monotonic() < give_up:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.4)
                stored = await self.store.read(call_id)
            if stored is not None:
                log.info("router.state_found_late", call_id=call_id)
        if stored is None:
            return None, None
        return await self.routes.get(self.robots.get(stored.state.robot)).classify(text), stored

    async def _user_said(self, msg: AsrFinal, received: float) -> None:
        with bind_call(call_id=msg.call_id, turn_id=msg.turn_id):
            found: dict[str, RobotConfig] = {}

            def change(state: DialogState) -> tuple[Route, str, list[ChatMessage]] | None:
                if msg.turn_id in state.dropped_turns:
                    return None  # its interrupt came first: these words are not part of the dialogue
                robot = found.get(state.robot) or self.robots.get(state.robot)
                found[state.robot] = robot
                said = [
                    i for i, m in enumerate(state.history) if m.role == "user" and m.turn_id == msg.turn_id
                ]
                if said:  # a retry of this turn (its first try died after saving): same request again
                    earlier = [m for m in state.history[: said[0]] if m.content]
                    kept = self.routes.get(robot).keep(state.prompt_id)
                    return kept, state.prompt_id, earlier[-self.settings.history_limit :]
                route = topic or self.routes.get(robot).keep(state.prompt_id)
                previous_prompt = state.prompt_id
                for merged in msg.merged:
                    state.drop_turn(merged)  # this transcript covers those turns' audio
                history = [m for m in state.history if m.content][-self.settings.history_limit :]
                state.prompt_id = route.prompt_id
                state.history.append(ChatMessage(role="user", content=msg.text, turn_id=msg.turn_id))
                return route, previous_prompt, history

            try:
                # keys are no words to take a topic from: a keypad turn keeps the current prompt
                topic, read = (None, None) if msg.dtmf else await self._classify(msg.call_id, msg.text)
                saved = await self.store.mutate(msg.call_id, change, read)
            except RobotConfigError as exc:
                await self._stage_error(msg.call_id, msg.turn_id, "robot_config", str(exc), False)
                return
            except DialogConflict as exc:
                await self._stage_error(msg.call_id, msg.turn_id, "state_conflict", str(exc), True)
                return
            except DialogStateError as exc:
                await self._stage_error(msg.call_id, msg.turn_id, "bad_dialog_state", str(exc), False)
                return
            if saved is None:
                await self._stage_error(msg.call_id, msg.turn_id, "no_dialog_state", "no call.started", False)
                return
            if saved[1] is None:
                ROUTER_DROPS.labels("dropped_turn").inc()
                log.info("router.turn_already_dropped")
                return
            state, (route, previous_prompt, history) = saved[0], saved[1]
            robot = found[state.robot]
            if route.switched_from(previous_prompt):
                PROMPT_SWITCHES.labels(robot.name).inc()
                await self._publish(
                    subjects.lifecycle(msg.call_id),
                    PromptSwitched(
                        call_id=msg.call_id,
                        turn_id=msg.turn_id,
                        from_prompt=previous_prompt,
                        to_prompt=route.prompt_id,
                        matched=route.matched,
                    ),
                    subjects.work_msg_id(msg.turn_id, "prompt.switched"),
                )
            await self._publish(
                subjects.llm_request(msg.call_id),
                llm_request(
                    state,
                    robot,
                    msg.turn_id,
                    history,
                    msg.text,
                    speech_end_ts_ms=msg.speech_end_ts_ms,
                    event="dtmf" if msg.dtmf else "",
                ),
                subjects.work_msg_id(msg.turn_id, "llm.request"),
            )
            elapsed_ms = (time.perf_counter() - received) * 1000
            ROUTE_LATENCY.observe(elapsed_ms)
            tracing.span(
                "router.route", msg.call_id, msg.turn_id, elapsed_ms, robot=robot.name, how=route.how
            )
            load.observe_turn(SERVICE, elapsed_ms / 1000)
            log.info(
                "router.routed",
                prompt_id=state.prompt_id,
                switched=route.switched_from(previous_prompt),
                matched=route.matched,
                how=route.how,
                score=round(route.score, 3),
                ms=round(elapsed_ms, 2),
                pii_text=msg.text,
            )

    async def _bot_said(self, msg: LlmDone) -> None:
        def change(state: DialogState) -> bool:
            if any(m.role == "assistant" and m.turn_id == msg.turn_id for m in state.history):
                return False  # a repeated llm.done
            if msg.turn_id in state.dropped_turns:
                return False  # a reply to words that left the dialogue: never heard, not recorded
            played = state.pending_interrupts.pop(msg.turn_id, None)
            interrupted = played is not None or msg.interrupted
            content = played if played is not None else msg.text
            if content or interrupted:
                state.history.append(
                    ChatMessage(
                        role="assistant", content=content, turn_id=msg.turn_id, interrupted=interrupted
                    )
                )
            if msg.dialog_state:
                state.script_state = msg.dialog_state
            state.turns += 1
            return True

        await self._mutate_quietly(msg.call_id, msg.turn_id, change, "router.bot_said")

    async def _interrupted(self, msg: ControlInterrupt) -> None:
        def change(state: DialogState) -> str:
            if msg.caller_text_dropped:
                # continued (the next turn's transcript holds these words) or only "угу": out
                return f"dropped {state.drop_turn(msg.turn_id)}"
            for m in reversed(state.history):
                if m.role == "assistant" and m.turn_id == msg.turn_id:
                    m.content = msg.played_text
                    m.interrupted = True
                    return "applied"
            state.pending_interrupts[msg.turn_id] = msg.played_text
            while len(state.pending_interrupts) > MAX_PENDING_INTERRUPTS:
                del state.pending_interrupts[next(iter(state.pending_interrupts))]
            return "pending"

        await self._mutate_quietly(msg.call_id, msg.turn_id, change, "router.interrupt_recorded")

    async def _no_input(self, msg: CallNoInput) -> None:
        """The caller stayed silent: ask the robot for a re-prompt (the script engine counts them)."""
        with bind_call(call_id=msg.call_id, turn_id=msg.turn_id):
            try:
                state = await self.store.load(msg.call_id)
                robot = self.robots.get(state.robot) if state is not None else None
            except RobotConfigError as exc:
                await self._stage_error(msg.call_id, msg.turn_id, "robot_config", str(exc), False)
                return
            except DialogStateError as exc:
                await self._stage_error(msg.call_id, msg.turn_id, "bad_dialog_state", str(exc), False)
                return
            if state is None or robot is None:
                ROUTER_DROPS.labels("no_dialog_state").inc()
                log.info("router.no_dialog_state", on="router.no_input")
                return
            if robot.settings.mode == "realtime":
                ROUTER_DROPS.labels("no_input_realtime").inc()
                return  # the realtime model runs that call's dialogue itself
            history = [m for m in state.history if m.content][-self.settings.history_limit :]
            await self._publish(
                subjects.llm_request(msg.call_id),
                llm_request(state, robot, msg.turn_id, history, "", event="no_input"),
                subjects.work_msg_id(msg.turn_id, "llm.request"),
            )
            log.info("router.no_input", count=msg.count, silence_ms=msg.silence_ms, prompt_id=state.prompt_id)

    async def _mutate_quietly(
        self, call_id: str, turn_id: str, change: Callable[[DialogState], object], event: str
    ) -> None:
        with bind_call(call_id=call_id, turn_id=turn_id):
            try:
                saved = await self.store.mutate(call_id, change)
            except DialogConflict as exc:
                await self._stage_error(call_id, turn_id, "state_conflict", str(exc), True)
                return
            except DialogStateError as exc:
                await self._stage_error(call_id, turn_id, "bad_dialog_state", str(exc), False)
                return
            if saved is None:
                ROUTER_DROPS.labels("no_dialog_state").inc()
                log.info("router.no_dialog_state", on=event)
                return
            log.info(event, outcome=saved[1], turns=saved[0].turns)


def llm_request(
    state: DialogState,
    robot: RobotConfig,
    turn_id: str,
    history: list[ChatMessage],
    user_text: str,
    *,
    speech_end_ts_ms: int = 0,
    event: str = "",
) -> LlmRequest:
    """The bot turn to generate, from the call's dialogue state (the active prompt, the script state)."""
    return LlmRequest(
        call_id=state.call_id,
        turn_id=turn_id,
        robot=robot.name,
        prompt_id=state.prompt_id,
        system_prompt=fill(robot.prompt_text(state.prompt_id), state.variables),
        history=history,
        user_text=user_text,
        sample_rate=state.sample_rate,
        speech_end_ts_ms=speech_end_ts_ms,
        dialog_state=state.script_state,
        event=event,
        variables=state.variables,
    )


def build() -> tuple[RouterService, RouterSettings]:
    settings = RouterSettings()
    return RouterService(settings), settings
