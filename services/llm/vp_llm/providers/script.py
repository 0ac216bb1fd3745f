"""``script`` provider: the deterministic dialogue engine, streamed word by word like a real LLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from voiceplatform.config import RobotConfig
from voiceplatform.providers import LlmChunk, LlmOptions
from voiceplatform.wire import ChatMessage
from vp_llm.script_engine import DialogScript, ScriptState


class ScriptDialog:
    name = "script"

    def __init__(self, robot: RobotConfig) -> None:
        self.script = DialogScript.load(robot.dialog_path)

    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        user_text = next((m.content for m in reversed(messages) if m.role == "user"), "")
        state = ScriptState.decode(options.dialog_state)
        prompt = options.prompt_id or state.prompt
        step = self.script.step(state.state or self.script.start, prompt, user_text)
        words = step.reply.split()
        for i, word in enumerate(words):
            yield LlmChunk(text=word if i == len(words) - 1 else word + " ")
            # a checkpoint per word keeps the engine instant yet cancellable, like a real stream
            await asyncio.sleep(0)
        new_state = ScriptState(state=step.state, prompt=prompt).encode()
        yield LlmChunk(dialog_state=new_state, end_call=step.end_call, meta={"matched": step.matched})

    async def aclose(self) -> None:
        return None
