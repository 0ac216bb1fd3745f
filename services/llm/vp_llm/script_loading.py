"""dialog.json → validated parts of a DialogScript (every problem reported at once).

Errors (a state that does not exist, an intent with neither keywords nor examples) refuse the
script; weaker problems (an empty ``examples`` list, examples not in the robot's language) are
warnings the provider logs and counts, and the intent keeps working on what it has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from voiceplatform.numerals import words_to_digits
from voiceplatform.text import Keyword, tokenize

INTENT_KEYS = {"id", "keywords", "examples", "dtmf", "reply", "next", "end_call", "prompt", "transfer_to"}
BUILTIN_KEYS = {
    "repeat": {"enabled", "keywords", "examples", "dtmf", "reply"},
    "operator": {"enabled", "keywords", "examples", "dtmf", "reply", "unavailable"},
    "goodbye": {"enabled", "keywords", "examples", "dtmf", "reply"},
    "no_input": {"reply", "limit", "goodbye"},
}
# measured on bench/data/brain_ru.json: off-topic phrases stay below, garbled on-topic ones above
DEFAULT_MIN_SIMILARITY = 0.55
DEFAULT_NO_INPUT_LIMIT = 3
# a key sequence an intent answers (the end key, "#" by default, is not part of what was pressed)
_KEYS = re.compile(r"^[0-9*#A-D]{1,64}$")
_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")

# Built-in intents every robot understands; dialog.json "builtins" overrides any part of them.
BUILTIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "repeat": {
        "keywords": ["повторите", "повтори", "что вы сказали", "что ты сказал", "не расслышал"],
        "examples": [
            "повторите пожалуйста",
            "что вы сказали",
            "не расслышала можно еще раз",
            "извините я не услышал",
            "скажите еще раз",
            "повтарите",
            "што вы сказали",
        ],
        "reply": "Я слушаю вас. Чем могу помочь?",
    },
    "operator": {
        "keywords": ["оператор", "живой человек", "менеджер", "соедините"],
        "examples": [
            "соедините с оператором",
            "позовите человека",
            "хочу поговорить с живым человеком",
            "переключите на менеджера",
            "можно с кем-нибудь из сотрудников поговорить",
            "апиратор пожалуйста",
        ],
        "reply": "Соединяю вас с оператором, оставайтесь на линии.",
        "unavailable": "К сожалению, оператор сейчас недоступен. Я постараюсь помочь сам.",
    },
    "goodbye": {
        "keywords": ["до свидания", "всего доброго", "всего хорошего", "прощайте", "до встречи"],
        "examples": [
            "до свидания",
            "всего доброго",
            "ну все пока",
            "спасибо больше ничего не нужно до свидания",
            "спасибо до свидания",
            "на этом все прощайте",
            "да свиданья",
        ],
        "reply": "Спасибо за звонок, всего доброго!",
    },
    "no_input": {
        "reply": "Вас не слышно. Повторите, пожалуйста.",
        "limit": DEFAULT_NO_INPUT_LIMIT,
        "goodbye": "Вас по-прежнему не слышно. Перезвоните нам, пожалуйста. Всего доброго!",
    },
}


class DialogScriptError(ValueError):
    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Intent:
    # "id" from dialog.json, else where it was defined ("states.main.intents[2]"); "builtin.repeat"
    name: str
    keywords: tuple[Keyword, ...]
    reply: str
    examples: tuple[str, ...] = ()
    next: str | None = None
    end_call: bool = False
    prompt: str | None = None
    builtin: str = ""  # "repeat" | "operator" | "goodbye" for the built-in intents
    dtmf: tuple[str, ...] = ()  # key sequences (phone keypad) that choose this intent
    transfer_to: str = ""  # hand the caller over to this destination after the reply

    def keyword_hit(self, tokens: list[str]) -> str | None:
        for keyword in self.keywords:
            if keyword.matches(tokens):
                return keyword.phrase
        return None


@dataclass(frozen=True)
class DialogNode:
    name: str
    intents: tuple[Intent, ...]
    fallback: str
    fallback_by_prompt: dict[str, str] = field(default_factory=dict)
    fallback_next: str | None = None


@dataclass(frozen=True)
class Builtins:
    intents: tuple[Intent, ...]  # the enabled ones among repeat, operator, goodbye
    repeat_empty: str  # repeat with nothing said yet
    operator_unavailable: str
    no_input_reply: str
    no_input_limit: int
    no_input_goodbye: str


@dataclass
class ScriptSpec:
    start: str
    nodes: dict[str, DialogNode]
    global_intents: tuple[Intent, ...]
    builtins: Builtins
    min_similarity: float
    transfer_to: str
    warnings: list[tuple[str, str]]  # (kind, text)


def keyword(phrase: str, language: str) -> Keyword:
    """Keywords get the same number-word folding as the caller's text ("пятьсот" ≡ "500")."""
    return Keyword.parse(words_to_digits(phrase, language))


class _Checker:
    def __init__(self, language: str) -> None:
        self.language = language
        self.problems: list[str] = []
        self.warnings: list[tuple[str, str]] = []

    def phrases(self, at: str, raw: Any, what: str) -> list[str] | None:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(p, str) and tokenize(p) for p in raw):
            self.problems.append(f"{at}.{what}: must be a list of phrases with words")
            return None
        return raw

    def keys(self, at: str, raw: Any) -> tuple[str, ...] | None:
        """``"dtmf": "1"`` or ``["1", "01"]``: key sequences of 0-9 * # A-D."""
        seqs = [raw] if isinstance(raw, str) else raw
        if raw is None:
            return ()
        if not isinstance(seqs, list) or not all(isinstance(k, str) and _KEYS.match(k) for k in seqs):
            self.problems.append(f"{at}.dtmf: must be a key sequence or a list of them (0-9 * # A-D)")
            return None
        return tuple(seqs)

    def examples(self, at: str, raw: Any) -> list[str] | None:
        examples = self.phrases(at, raw, "examples")
        if examples is None:
            return None
        if raw is not None and not examples:
            self.warnings.append(("empty_examples", f"{at}.examples: empty, matched by keywords only"))
        if self.language.lower().startswith("ru"):
            foreign = [e for e in examples if _LETTER.search(e) and not _CYRILLIC.search(e)]
            if foreign:
                self.warnings.append(("foreign_examples", f"{at}.examples: not in Russian: {foreign[:3]}"))
        return examples

    def intents(self, where: str, raw: Any) -> list[Intent]:
        if not isinstance(raw, list):
            self.problems.append(f"{where}: must be a list of intents")
            return []
        good: list[Intent] = []
        for i, intent in enumerate(raw):
            at = f"{where}[{i}]"
            if not isinstance(intent, dict):
                self.problems.append(f"{at}: must be an object")
                continue
            unknown = set(intent) - INTENT_KEYS
            if unknown:
                self.problems.append(f"{at}: unknown keys {sorted(unknown)}")
            kws = self.phrases(at, intent.get("keywords"), "keywords")
            examples = self.examples(at, intent.get("examples"))
            keys = self.keys(at, intent.get("dtmf"))
            if kws is None or examples is None or keys is None:
                continue
            if not kws and not examples and not keys:
                self.problems.append(f"{at}.keywords: needs keywords, examples or dtmf keys")
                continue
            transfer_to = intent.get("transfer_to", "")
            if not isinstance(transfer_to, str):
                self.problems.append(f"{at}.transfer_to: must be text (a number or a queue)")
                continue
            reply, name = intent.get("reply"), intent.get("id", at)
            if not isinstance(name, str) or not name.strip():
                self.problems.append(f"{at}.id: must be non-empty text")
                continue
            if not isinstance(reply, str) or not reply.strip():
                self.problems.append(f"{at}.reply: must be non-empty text")
                continue
            good.append(
                Intent(
                    name=name.strip(),
                    keywords=tuple(keyword(k, self.language) for k in kws),
                    reply=reply.strip(),
                    examples=tuple(examples),
                    next=intent.get("next"),
                    end_call=bool(intent.get("end_call", False)),
                    prompt=intent.get("prompt"),
                    dtmf=keys,
                    transfer_to=transfer_to.strip(),
                )
            )
        return good

    def text(self, at: str, raw: Any, default: str) -> str:
        if raw is None:
            return default
        if not isinstance(raw, str) or not raw.strip():
            self.problems.append(f"{at}: must be non-empty text")
            return default
        return raw.strip()

    def builtins(self, raw: Any) -> Builtins:
        if not isinstance(raw, dict):
            if raw is not None:
                self.problems.append("builtins: must be an object")
            raw = {}
        unknown = set(raw) - set(BUILTIN_KEYS)
        if unknown:
            self.problems.append(f"builtins: unknown built-in intents {sorted(unknown)}")
        over: dict[str, dict[str, Any]] = {}
        for kind, allowed in BUILTIN_KEYS.items():
            given = raw.get(kind) or {}
            if not isinstance(given, dict):
                self.problems.append(f"builtins.{kind}: must be an object")
                given = {}
            if set(given) - allowed:
                self.problems.append(f"builtins.{kind}: unknown keys {sorted(set(given) - allowed)}")
            over[kind] = {**BUILTIN_DEFAULTS[kind], **given}
        intents: list[Intent] = []
        for kind in ("repeat", "operator", "goodbye"):
            at, spec = f"builtins.{kind}", over[kind]
            if spec.get("enabled", True) is False:
                continue
            kws = self.phrases(at, spec["keywords"], "keywords") or []
            intents.append(
                Intent(
                    name=f"builtin.{kind}",
                    keywords=tuple(keyword(k, self.language) for k in kws),
                    reply=self.text(f"{at}.reply", spec["reply"], BUILTIN_DEFAULTS[kind]["reply"]),
                    examples=tuple(self.examples(at, spec["examples"]) or []),
                    end_call=kind == "goodbye",
                    builtin=kind,
                    dtmf=self.keys(at, spec.get("dtmf")) or (),
                )
            )
        no_input = over["no_input"]
        limit = no_input["limit"]
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10:
            self.problems.append("builtins.no_input.limit: must be a whole number from 1 to 10")
            limit = DEFAULT_NO_INPUT_LIMIT
        return Builtins(
            intents=tuple(intents),
            repeat_empty=self._text_of(over, "repeat", "reply"),
            operator_unavailable=self._text_of(over, "operator", "unavailable"),
            no_input_reply=self._text_of(over, "no_input", "reply"),
            no_input_limit=limit,
            no_input_goodbye=self._text_of(over, "no_input", "goodbye"),
        )

    def _text_of(self, over: dict[str, dict[str, Any]], kind: str, key: str) -> str:
        return self.text(f"builtins.{kind}.{key}", over[kind][key], BUILTIN_DEFAULTS[kind][key])


def parse_script(data: Any, source: str, language: str = "ru") -> ScriptSpec:
    """Validate a dialog.json document; raises DialogScriptError listing every problem."""
    if not isinstance(data, dict):
        raise DialogScriptError(source, ["must hold a JSON object"])
    states = data.get("states")
    if not isinstance(states, dict) or not states:
        raise DialogScriptError(source, ["states: must be a non-empty object"])
    check = _Checker(language)
    start = data.get("start")
    if start not in states:
        check.problems.append(f"start: {start!r} is not a state")
    targets: list[tuple[str, Any]] = []
    nodes: dict[str, DialogNode] = {}
    for name, node in states.items():
        if not isinstance(node, dict):
            check.problems.append(f"states.{name}: must be an object")
            continue
        intents = check.intents(f"states.{name}.intents", node.get("intents", []))
        fallback = node.get("fallback")
        if not isinstance(fallback, str) or not fallback.strip():
            check.problems.append(f"states.{name}.fallback: must be non-empty text")
            fallback = ""
        by_prompt = node.get("fallback_by_prompt", {})
        if not isinstance(by_prompt, dict) or not all(isinstance(v, str) for v in by_prompt.values()):
            check.problems.append(f"states.{name}.fallback_by_prompt: must map prompt ids to text")
            by_prompt = {}
        targets += [(f"{it.name}.next", it.next) for it in intents]
        targets.append((f"states.{name}.fallback_next", node.get("fallback_next")))
        nodes[name] = DialogNode(
            name=name,
            intents=tuple(intents),
            fallback=fallback.strip(),
            fallback_by_prompt={k: v.strip() for k, v in by_prompt.items()},
            fallback_next=node.get("fallback_next"),
        )
    global_intents = check.intents("global", data.get("global", []))
    targets += [(f"{it.name}.next", it.next) for it in global_intents]
    for where, target in targets:
        if target is not None and target not in states:
            check.problems.append(f"{where}: {target!r} is not a state")
    min_similarity = data.get("min_similarity", DEFAULT_MIN_SIMILARITY)
    if (
        isinstance(min_similarity, bool)
        or not isinstance(min_similarity, int | float)
        or not 0 < min_similarity < 1
    ):
        check.problems.append("min_similarity: must be a number between 0 and 1")
        min_similarity = DEFAULT_MIN_SIMILARITY
    transfer_to = data.get("transfer_to", "")
    if not isinstance(transfer_to, str):
        check.problems.append("transfer_to: must be text (a number or a queue)")
        transfer_to = ""
    builtins = check.builtins(data.get("builtins"))
    if check.problems:
        raise DialogScriptError(source, check.problems)
    return ScriptSpec(
        start=str(start),
        nodes=nodes,
        global_intents=tuple(global_intents),
        builtins=builtins,
        min_similarity=float(min_similarity),
        transfer_to=transfer_to.strip(),
        warnings=check.warnings,
    )
