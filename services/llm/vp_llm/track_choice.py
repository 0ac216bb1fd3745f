"""Which recorded track answers a caller (``mode: "llm_script"``): by meaning, or asked of an LLM.

By meaning: every track's ``when`` and ``examples`` are labelled example phrases of an
``ExampleIndex`` (the offline sentence encoder of ``voiceplatform.meaning``, as the script engine
uses); the caller's words take the track of the nearest phrase when it is at least
``min_similarity`` similar, else no track fits (the manifest's fallthrough).

By a generative provider: it is shown the track ids with their ``when`` and asked for ONE id, or
``none``. An answer that names no known id (or a failure) counts as no answer: the meaning match
decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voiceplatform.config.tracks import Track, Tracks
from voiceplatform.meaning import ExampleIndex
from voiceplatform.wire import ChatMessage

NONE_ANSWER = "none"
CHOICE_INSTRUCTIONS = (
    "You choose which recorded reply a phone robot plays to the caller's last message. "
    "Answer with exactly one id from the list below and nothing else. "
    f"If no recording answers the caller, answer {NONE_ANSWER}.\n\nRecordings (id: when to play it):\n"
)
# ids are [A-Za-z0-9_.-]: a model that wraps its answer in quotes or adds a full stop still counts
_WORD = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Choice:
    """The track for a turn (None: no track fits) and how it was found."""

    track: Track | None
    how: str  # "llm" | "meaning" | "no_match" | "llm_none"
    score: float = 0.0
    matched: str = ""  # the nearest phrase (meaning) or the model's answer (llm)


class TrackChooser:
    """One robot's tracks (one manifest version) and their embedded phrases."""

    def __init__(self, tracks: Tracks, language: str = "ru") -> None:
        self.tracks = tracks
        self.manifest = tracks.manifest
        self.index: ExampleIndex[str] = ExampleIndex(
            ((t.id, phrase) for t in self.manifest.tracks for phrase in (t.when, *t.examples) if phrase),
            language,
        )

    def warm(self) -> None:
        self.index.warm()

    async def by_meaning(self, user_text: str) -> Choice:
        """The nearest track if similar enough; EncoderUnavailable when the encoder is missing."""
        if not user_text.strip():
            return Choice(None, "no_match")
        match = await self.index.anearest(user_text)
        if match is None or match.score < self.manifest.min_similarity:
            score = match.score if match is not None else 0.0
            return Choice(None, "no_match", score, match.example if match is not None else "")
        return Choice(self.manifest.by_id(match.label), "meaning", match.score, match.example)

    def choice_messages(self, system_prompt: str, history: list[ChatMessage]) -> list[ChatMessage]:
        """The chat for a generative provider: the robot's prompt, the track list, the dialogue."""
        # a track with neither (the fallthrough's "not understood" line) is what "none" leads to
        listing = "\n".join(
            f"- {t.id}: {t.when or '; '.join(t.examples)}"
            for t in self.manifest.tracks
            if t.when or t.examples
        )
        system = CHOICE_INSTRUCTIONS + listing
        if system_prompt:
            system = f"{system_prompt}\n\n{system}"
        return [ChatMessage(role="system", content=system), *history]

    def parse_answer(self, answer: str) -> Choice | None:
        """A model's answer as a choice; None when it names no known id (or says several)."""
        words = _WORD.findall(answer.strip().strip("`'\"").lower())
        words = [w.strip(".") for w in words]
        known = {t.id.lower(): t for t in self.manifest.tracks}
        named = {w for w in words if w in known}
        if len(named) == 1:
            return Choice(known[named.pop()], "llm", 1.0, answer.strip()[:80])
        if not named and words[:1] == [NONE_ANSWER]:
            return Choice(None, "llm_none", 0.0, answer.strip()[:80])
        return None
