"""The script engine's brain: meaning over examples, keyword priority, built-in intents, no-input."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from voiceplatform import meaning
from voiceplatform.meaning import EncoderUnavailable, Vectors
from vp_llm.script_engine import DialogScript, DialogScriptError, ScriptState

ROBOTS = Path(__file__).resolve().parents[2] / "robots"
SHOP = ROBOTS / "pipeline_russian" / "dialog.json"


def shop() -> DialogScript:
    return DialogScript.load(SHOP)


def tiny(**extra: Any) -> DialogScript:
    data = {
        "start": "main",
        "states": {
            "main": {
                "intents": [
                    {
                        "id": "price",
                        "keywords": ["цена"],
                        "examples": ["сколько стоит"],
                        "reply": "Сто рублей.",
                    }
                ],
                "fallback": "Не поняла.",
            }
        },
        **extra,
    }
    return DialogScript.from_dict(data)


async def say(script: DialogScript, text: str, st: ScriptState | None = None, event: str = "") -> Any:
    st = st or ScriptState(state=script.start)
    with contextlib.suppress(EncoderUnavailable):
        await script.index.ready(60)  # embedding examples takes a while on a busy machine
    step = await script.respond(st, "default", text, event)
    return step, st.after(step, "default")


@pytest.mark.slow
@pytest.mark.parametrize("state", ["main", "pets", "children", "order"])
async def test_delivery_question_gets_the_delivery_answer_in_every_state(state: str) -> None:
    step, _ = await say(shop(), "Сколько стоит доставка?", ScriptState(state=state))
    assert step.intent == "delivery" and "Доставляем" in step.reply


@pytest.mark.slow
async def test_meaning_matches_without_keywords_and_off_topic_is_a_miss() -> None:
    script = shop()
    pets, _ = await say(script, "у нас песик дворняжка")
    assert (pets.intent, pets.how, pets.state) == ("pets", "meaning", "pets")
    assert pets.score >= script.min_similarity
    off, _ = await say(script, "какая завтра погода")
    assert off.how == "fallback" and off.reply.startswith("Извините")
    assert 0 < off.score < script.min_similarity


@pytest.mark.slow
async def test_minimum_similarity_comes_from_dialog_json() -> None:
    strict = tiny(min_similarity=0.99)
    loose = tiny(min_similarity=0.3)
    assert strict.min_similarity == 0.99
    near, _ = await say(loose, "а сколько это будет стоить")
    assert near.intent == "price" and near.how == "meaning"
    far, _ = await say(strict, "а сколько это будет стоить")
    assert far.how == "fallback"


async def test_keywords_win_without_the_encoder() -> None:
    script = tiny()
    step, _ = await say(script, "А цена какая?")
    assert (step.intent, step.how, step.matched) == ("price", "keyword", "цена")


class Broken:
    def encode(self, texts: Sequence[str]) -> Vectors:
        raise RuntimeError("no model")


async def test_encoder_failure_falls_back_to_keywords_never_fails_the_turn() -> None:
    meaning.set_encoder(Broken())
    try:
        script = shop()
        both, _ = await say(script, "сколько стоит доставка")  # two keyword hits, no meaning: first
        miss, _ = await say(script, "у нас песик дворняжка")
    finally:
        meaning.set_encoder(None)
    assert both.how == "keyword" and both.intent == "prices"
    assert miss.how == "fallback"


async def test_number_words_equal_digits_for_keywords() -> None:
    script = DialogScript.from_dict(
        {
            "start": "m",
            "states": {"m": {"intents": [{"keywords": ["500 рублей"], "reply": "Да."}], "fallback": "?"}},
        }
    )
    assert script.step("m", "default", "а пятьсот рублей можно").reply == "Да."
    assert script.step("m", "default", "а 500 рублей можно").reply == "Да."


async def test_repeat_repeats_the_last_reply() -> None:
    script = tiny()
    first, st = await say(script, "повторите")
    assert first.how == "repeat" and first.reply == script.builtins.repeat_empty
    price, st = await say(script, "цена", st)
    again, st2 = await say(script, "что вы сказали", st)
    assert again.reply == price.reply == "Сто рублей."
    assert st2.last == "Сто рублей."  # a repeat is not itself what gets repeated next


async def test_operator_transfers_when_the_robot_has_a_destination() -> None:
    with_dest = tiny(transfer_to="operators")
    step, _ = await say(with_dest, "соедините с оператором")
    assert step.transfer_to == "operators" and not step.end_call
    assert step.reply.startswith("Соединяю")
    without = tiny()
    step, _ = await say(without, "позовите оператора")
    assert step.transfer_to == "" and "недоступен" in step.reply


async def test_goodbye_hangs_up() -> None:
    step, _ = await say(tiny(), "Ну всего доброго!")
    assert step.end_call and step.intent == "builtin.goodbye"


async def test_no_input_reprompts_then_says_goodbye_and_hangs_up() -> None:
    script = tiny(builtins={"no_input": {"limit": 3, "reply": "Алло?", "goodbye": "До свидания."}})
    one, st = await say(script, "", event="no_input")
    two, st = await say(script, "", st, event="no_input")
    assert (one.reply, one.end_call, two.reply, two.end_call) == ("Алло?", False, "Алло?", False)
    three, st = await say(script, "", st, event="no_input")
    assert three.reply == "До свидания." and three.end_call and st.silences == 3
    # speech in between starts the count again
    _, st = await say(script, "", event="no_input")
    _, st = await say(script, "цена", st)
    assert st.silences == 0
    again, _ = await say(script, "", st, event="no_input")
    assert not again.end_call


async def test_builtin_texts_are_overridable_and_builtins_can_be_disabled() -> None:
    script = tiny(builtins={"goodbye": {"reply": "Пока-пока!"}, "operator": {"enabled": False}})
    bye, _ = await say(script, "до свидания")
    assert bye.reply == "Пока-пока!"
    assert all(it.builtin != "operator" for it in script.builtins.intents)


def test_old_state_decodes_and_new_state_round_trips() -> None:
    old = ScriptState.decode(json.dumps({"state": "pets", "prompt": "default"}))
    assert old == ScriptState("pets", "default", "", 0)
    new = ScriptState("order", "pets", "Оформить?", 2)
    assert ScriptState.decode(new.encode()) == new
    assert json.loads(new.encode())["state"] == "order"
    assert ScriptState.decode("{broken") == ScriptState()


def test_validation_warns_on_empty_or_foreign_examples_and_refuses_empty_intents() -> None:
    script = DialogScript.from_dict(
        {
            "start": "m",
            "states": {
                "m": {
                    "intents": [
                        {"keywords": ["да"], "examples": [], "reply": "Ок."},
                        {
                            "keywords": ["цена"],
                            "examples": ["how much is it", "what's the price"],
                            "reply": "Сто.",
                        },
                    ],
                    "fallback": "?",
                }
            },
        }
    )
    kinds = [kind for kind, _ in script.warnings]
    assert kinds == ["empty_examples", "foreign_examples"]
    with pytest.raises(DialogScriptError) as err:
        DialogScript.from_dict(
            {
                "start": "m",
                "min_similarity": 2,
                "states": {"m": {"intents": [{"examples": [], "reply": "x"}], "fallback": "?"}},
                "builtins": {"no_input": {"limit": 0}, "smalltalk": {}},
            }
        )
    text = str(err.value)
    for expected in ("needs keywords, examples or dtmf keys", "min_similarity", "limit", "smalltalk"):
        assert expected in text


async def test_keys_choose_an_intent_only_when_pressed() -> None:
    script = DialogScript.from_dict(
        {
            "start": "m",
            "states": {
                "m": {
                    "intents": [
                        {"id": "one", "dtmf": "1", "reply": "Один."},
                        {"id": "pay", "dtmf": ["2", "*2"], "keywords": ["оплата"], "reply": "Оплата."},
                        {"id": "person", "dtmf": "9", "reply": "Соединяю.", "transfer_to": "200"},
                    ],
                    "fallback": "Нажмите один.",
                }
            },
            "builtins": {"operator": {"dtmf": "0", "examples": []}, "repeat": {"enabled": False}},
        }
    )
    st = ScriptState()
    assert (await script.respond(st, "", "1", "dtmf")).intent == "one"
    assert (await script.respond(st, "", "*2", "dtmf")).intent == "pay"
    assert (await script.respond(st, "", "5", "dtmf")).how == "fallback"
    assert (await script.respond(st, "", "оплата", "")).intent == "pay"
    person = await script.respond(st, "", "9", "dtmf")
    assert person.transfer_to == "200" and person.how == "dtmf"
    operator = await script.respond(st, "", "0", "dtmf")
    assert operator.how == "operator" and operator.intent == "builtin.operator"
    with pytest.raises(DialogScriptError, match="dtmf"):
        DialogScript.from_dict(
            {"start": "m", "states": {"m": {"intents": [{"dtmf": "1x", "reply": "x"}], "fallback": "?"}}}
        )
