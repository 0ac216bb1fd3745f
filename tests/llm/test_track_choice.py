"""llm_script robots: which recorded track answers the caller, through the LLM service.

The meaning match runs on the real sentence encoder (as the script engine's tests do); the
generative provider is a fake that answers what the test tells it to.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotConfig, RobotRegistry
from voiceplatform.config.tracks import load_tracks
from voiceplatform.providers import LlmChunk, LlmOptions, LlmProvider, ProviderConnectionError
from voiceplatform.wire import ChatMessage, LlmDone, LlmRequest, LlmSentence, StageError
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings
from vp_llm.track_choice import CHOICE_INSTRUCTIONS, TrackChooser

REPO = Path(__file__).resolve().parents[2]
ROBOT = "llm_script_russian"
PARAPHRASES = REPO / "bench" / "data" / "tracks_ru.json"
CALL = "call-tracks"


class FakeChooser:
    """A generative provider: answers the track question with ``choice`` (an exception is
    raised), and anything else (the free reply of a TTS fallthrough) with ``reply``."""

    name = "fake"
    choice: ClassVar[str | Exception] = "none"
    reply = "Я отвечу своими словами."
    asked: ClassVar[list[Sequence[ChatMessage]]] = []

    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        type(self).asked.append(messages)
        choosing = CHOICE_INSTRUCTIONS in messages[0].content
        answer = self.choice if choosing else self.reply
        if isinstance(answer, Exception):
            raise answer
        yield LlmChunk(text=answer)

    async def aclose(self) -> None:
        return None


def fake_factory(name: str, robot: RobotConfig) -> LlmProvider:
    return FakeChooser()


def write_robot(robots_dir: Path, name: str, llm: dict[str, Any], **manifest: Any) -> str:
    folder = robots_dir / name
    shutil.copytree(REPO / "robots" / ROBOT, folder, ignore=shutil.ignore_patterns("*.wav"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["llm"] = llm
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    path = folder / "tracks" / "manifest.json"
    data = {**json.loads(path.read_text(encoding="utf-8")), **manifest}
    if data["fallthrough"] == "tts":  # the recorded "not understood" line is no longer wanted
        data["tracks"] = [t for t in data["tracks"] if t["id"] != "not_understood"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return name


@pytest.fixture
def robots_dir(tmp_path: Path) -> Path:
    target = tmp_path / "robots"
    target.mkdir()
    write_robot(target, "by_meaning", {"provider": "script"})
    write_robot(target, "by_meaning_tts", {"provider": "script"}, fallthrough="tts")
    write_robot(target, "by_llm", {"provider": "fake"})
    write_robot(target, "by_llm_tts", {"provider": "fake"}, fallthrough="tts")
    write_robot(target, "by_keys", {"provider": "fake"})
    manifest = target / "by_keys" / "tracks" / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for t in data["tracks"]:
        t["dtmf"] = {"operator": ["0", "0#"], "hours": "1"}.get(t["id"], [])
    manifest.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return target


@pytest.fixture
async def llm(broker: MemoryBroker, robots_dir: Path) -> AsyncIterator[LlmService]:
    FakeChooser.choice, FakeChooser.asked = "none", []
    registry = RobotRegistry(robots_dir)
    service = LlmService(LlmSettings(), robots=registry, provider_factory=fake_factory)
    await service.start(broker.bus("llm"))
    await service.tracks.ready(registry.get("by_meaning"), 60.0)  # the encoder may load slowly here
    yield service
    await service.drain(1.0)


@pytest.fixture
async def out(broker: MemoryBroker) -> Collector:
    return await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)


async def ask(
    broker: MemoryBroker,
    out: Collector,
    robot: str,
    turn_id: str,
    text: str,
    llm: LlmService,
    event: str = "",
) -> tuple[LlmSentence, LlmDone]:
    await llm.tracks.ready(llm.robots.get(robot), 60.0)
    req = LlmRequest(
        call_id=CALL,
        turn_id=turn_id,
        robot=robot,
        prompt_id="default",
        system_prompt="Ты администратор клиники.",
        history=[],
        user_text=text,
        sample_rate=16000,
        event=event,
    )
    await broker.bus("router").publish(subjects.llm_request(CALL), req)
    (done,) = await out.wait(LlmDone, turn_id=turn_id, timeout_s=20.0)
    (sentence,) = out.of(LlmSentence, turn_id=turn_id)
    return sentence, done


def track_text(track_id: str) -> str:
    track = load_tracks(REPO / "robots" / ROBOT).manifest.by_id(track_id)
    assert track is not None
    return track.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("подскажите режим работы", "hours"),
        ("на какой улице вы", "address"),
        ("сколько я заплачу за визит к врачу", "price"),
        ("натощак надо приходить на анализы", "tests"),
        ("мне нужен администратор", "operator"),
    ],
)
async def test_meaning_match_plays_the_track_of_a_paraphrase(
    broker: MemoryBroker, llm: LlmService, out: Collector, text: str, expected: str
) -> None:
    sentence, done = await ask(broker, out, "by_meaning", "t1", text, llm)
    assert sentence.track == expected and sentence.last and sentence.index == 0
    assert sentence.text == done.text == track_text(expected)
    assert done.intent == expected and done.sentences == 1
    assert done.transfer_to == ("operators" if expected == "operator" else "")


async def test_goodbye_track_hangs_up_and_booking_transfers(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    _, bye = await ask(broker, out, "by_meaning", "t1", "спасибо большое до свидания", llm)
    assert bye.intent == "goodbye" and bye.hangup
    _, booking = await ask(broker, out, "by_meaning", "t2", "мне нужно к доктору", llm)
    assert booking.intent == "booking" and booking.transfer_to == "registry" and not booking.hangup


async def test_meaning_accuracy_on_the_paraphrase_set() -> None:
    """bench/data/tracks_ru.json: phrases that are no manifest example; 40 of 48 when measured."""
    chooser = TrackChooser(load_tracks(REPO / "robots" / ROBOT))
    cases = json.loads(PARAPHRASES.read_text(encoding="utf-8"))["cases"]
    right = 0
    for case in cases:
        choice = await chooser.by_meaning(case["text"])
        right += (choice.track.id if choice.track else None) == case["expect"]
    assert right >= 38, f"{right} of {len(cases)}"


async def test_no_track_fits_plays_the_fallthrough_track(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    sentence, done = await ask(broker, out, "by_meaning", "t1", "продайте мне холодильник", llm)
    assert sentence.track == "not_understood" and done.text == track_text("not_understood")


async def test_no_track_fits_and_fallthrough_tts_says_the_fallback_text(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    sentence, done = await ask(broker, out, "by_meaning_tts", "t1", "продайте мне холодильник", llm)
    robot = llm.robots.get("by_meaning_tts")
    assert sentence.track == "" and sentence.text == robot.settings.fallback_text == done.text
    assert done.provider == "fallthrough"


async def test_generative_choice_wins_over_meaning(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    FakeChooser.choice = " `price`."
    sentence, done = await ask(broker, out, "by_llm", "t1", "подскажите режим работы", llm)
    assert sentence.track == "price" and done.provider == "fake"
    prompt = FakeChooser.asked[0][0].content
    assert "Ты администратор клиники." in prompt and "- hours: " in prompt
    assert "not_understood" not in prompt  # the fallthrough is "none", not a listed recording
    assert FakeChooser.asked[0][-1].content == "подскажите режим работы"


@pytest.mark.parametrize(
    "answer", ["banana", "hours or price", ProviderConnectionError("fake", "refused")], ids=str
)
async def test_unknown_id_or_a_failure_falls_back_to_the_meaning_match(
    broker: MemoryBroker, llm: LlmService, out: Collector, answer: str | Exception
) -> None:
    FakeChooser.choice = answer
    sentence, done = await ask(broker, out, "by_llm", "t1", "на какой улице вы", llm)
    assert sentence.track == "address" and done.text == track_text("address")
    assert done.provider == "meaning"  # the model's answer did not decide


async def test_llm_says_none_and_fallthrough_tts_speaks_its_own_reply(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    FakeChooser.choice = "none"
    sentence, done = await ask(broker, out, "by_llm_tts", "t1", "какой курс доллара", llm)
    assert sentence.track == "" and done.text == FakeChooser.reply == sentence.text
    # the reply was asked with the robot's own prompt, as in pipeline mode
    assert CHOICE_INSTRUCTIONS not in FakeChooser.asked[-1][0].content
    FakeChooser.choice = "none"
    sentence, _ = await ask(broker, out, "by_llm", "t2", "какой курс доллара", llm)
    assert sentence.track == "not_understood"  # the manifest's fallthrough track


def test_answers_are_read_leniently_but_never_guessed() -> None:
    chooser = TrackChooser(load_tracks(REPO / "robots" / ROBOT))
    assert [
        (c.track.id if c.track else c.how) if c else None
        for c in map(chooser.parse_answer, ["Hours", '"address"', "id: price.", "None.", "", "hours, price"])
    ] == ["hours", "address", "price", "llm_none", None, None]


async def test_a_broken_manifest_fails_the_turn_with_a_clear_stage_error(
    broker: MemoryBroker, llm: LlmService, out: Collector, robots_dir: Path
) -> None:
    write_robot(robots_dir, "broken", {"provider": "script"}, fallthrough="nobody")
    req = LlmRequest(
        call_id=CALL,
        turn_id="t1",
        robot="broken",
        prompt_id="default",
        system_prompt="",
        history=[],
        user_text="какой у вас адрес",
        sample_rate=16000,
    )
    await broker.bus("router").publish(subjects.llm_request(CALL), req)
    (error,) = await out.wait(StageError, turn_id="t1")
    assert error.kind == "robot_config" and "fallthrough 'nobody'" in error.detail
    (done,) = await out.wait(LlmDone, turn_id="t1")
    assert done.sentences == 0 and out.of(LlmSentence, turn_id="t1") == []


async def test_keys_and_silence_play_the_manifests_tracks_without_asking_anyone(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    sentence, done = await ask(broker, out, "by_keys", "t1", "0", llm, event="dtmf")
    assert sentence.track == "operator" and done.transfer_to == "operators"
    sentence, _ = await ask(broker, out, "by_keys", "t2", "1", llm, event="dtmf")
    assert sentence.track == "hours"
    sentence, _ = await ask(broker, out, "by_keys", "t3", "", llm, event="no_input")
    assert sentence.track == "no_input" and sentence.text == track_text("no_input")
    assert FakeChooser.asked == []  # the manifest decided: no model was asked
    # keys no track has fall through, as words that fit no track do
    _, done = await ask(broker, out, "by_keys", "t4", "9", llm, event="dtmf")
    assert done.intent == "not_understood"
