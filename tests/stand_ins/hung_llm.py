"""A test-only LLM worker that takes each turn's work and never answers (a hung instance).

On a real bus it accepts the call's streaming roles (so the gateway's assignment completes), plays
the prompt router's part (each ``asr.final`` with words becomes an ``llm.request`` on the LLM
queue group) and, as the only LLM instance, takes every request and does nothing with it.
"""

from __future__ import annotations

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.wire import AsrFinal, AssignReply, AssignRequest, LlmRequest, Message


class HungLlm:
    def __init__(self, bus: Bus, roles: tuple[str, ...] = ("vad", "asr")) -> None:
        self.bus = bus
        self.roles = roles
        self.taken: list[LlmRequest] = []  # requests this instance took and will never answer
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        for role in self.roles:
            self._subs.append(await self.bus.subscribe(subjects.assign(role), self._assign, queue=role))
        self._subs.append(await self.bus.subscribe(subjects.ANY_ASR, self._route))
        self._subs.append(await self.bus.subscribe(subjects.ANY_LLM_REQUEST, self._take, queue="llm"))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    async def _assign(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, AssignRequest):
            return None
        return AssignReply(call_id=msg.call_id, role=msg.role, accepted=True, instance_id="hung-1")

    async def _route(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, AsrFinal) and msg.text.strip():
            await self.bus.publish(
                subjects.llm_request(msg.call_id),
                LlmRequest(
                    call_id=msg.call_id,
                    turn_id=msg.turn_id,
                    robot="bot",
                    prompt_id="default",
                    system_prompt="",
                    history=[],
                    user_text=msg.text,
                    sample_rate=16000,
                ),
            )
        return None

    async def _take(self, env: Envelope) -> Message | None:
        if isinstance(env.message, LlmRequest):
            self.taken.append(env.message)  # ... and hang: no sentence, no llm.done, ever
        return None
