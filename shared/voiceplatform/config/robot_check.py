"""Everything a call would use from a robot folder, checked before a call: ``vp check`` and every
service that loads a robot (``RobotRegistry``) run this one list of checkers (``CHECKERS``);
``vp check`` adds the author's (``AUTHOR_CHECKERS``) and the cloud providers' keys.

A problem is one line, ``<folder>/<file>: line <n>: <what>``. The checkers run after the folder
loaded (``load_robot``: config.json, .env, mode, option ranges, router prompt files); a folder that
does not load is reported with the loader's problems alone.

Recorded audio and its words: ``greeting.wav`` is played instead of ``greeting_text`` (and
``fallback.wav`` instead of ``fallback_text``), so a recording copied from another robot would
silently keep saying the old words. The words a recording says are kept next to it in
``greeting.wav.txt`` (``fallback.wav.txt``); a recording whose words are not recorded there, or
differ from the configured text, is a problem. Without a configured text the recording stands alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from voiceplatform.audio import read_wav
from voiceplatform.config.json_lines import line_of, split_path
from voiceplatform.config.robot import RobotConfig, RobotConfigError, load_robot
from voiceplatform.config.tracks import check_tracks as check_manifest

CONFIG_FILE = "config.json"
WORDS_SUFFIX = ".txt"  # greeting.wav → greeting.wav.txt: the words the recording says
# a key the check does not look at (services: keys belong to the worker that uses them); under 4
# characters, so it is never registered as a secret to mask
ASSUMED_KEY = "***"


@dataclass(frozen=True)
class Problem:
    file: str  # relative to the robot folder; "" for the folder itself
    message: str
    line: int | None = None

    def render(self, label: str = "") -> str:
        """``<label>/<file>: line <n>: <message>`` (without a label: relative to the folder)."""
        where = "/".join(part for part in (label, self.file) if part)
        at = f"line {self.line}: " if self.line else ""
        return f"{where}: {at}{self.message}" if where else f"{at}{self.message}"


@dataclass
class CheckResult:
    folder: Path
    label: str  # how the folder is named in problem lines (relative to the working directory)
    problems: list[Problem] = field(default_factory=list)
    robot: RobotConfig | None = None
    summary: list[str] = field(default_factory=list)  # what was checked, for the OK line

    def lines(self) -> list[str]:
        return [p.render(self.label) for p in self.problems]


class _AssumedKeys(dict[str, str]):
    """A robot's env in which every secret is present (its value never read)."""

    def get(self, key: str, default: str | None = None) -> str:  # type: ignore[override]
        return super().get(key) or ASSUMED_KEY


@dataclass(frozen=True)
class Context:
    folder: Path
    robot: RobotConfig
    keys: bool  # check that cloud providers' keys are present (vp check); services do not

    def problem(self, file: str, message: str, *wheres: str) -> Problem:
        """A problem in ``file``, at the line of the first JSON path of ``wheres`` found in it."""
        line = None
        if wheres and file.endswith(".json"):
            try:
                text = (self.folder / file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
            line = next((n for w in wheres if w and (n := line_of(text, w))), None)
        return Problem(file, message, line)

    @property
    def provider_robot(self) -> RobotConfig:
        """The robot handed to providers' own checks: with every key assumed present unless ``keys``."""
        if self.keys:
            return self.robot
        return replace(self.robot, env=_AssumedKeys(self.robot.env))


Checker = Callable[[Context], list[Problem]]


def _roles(robot: RobotConfig) -> dict[str, list[str]]:
    """Provider names a call of this robot may use, per role (provider first, then its fallbacks).

    Not the VAD: its two names are checked with the config, and its models need nothing else."""
    s = robot.settings
    if s.mode == "realtime":
        return {"realtime": [s.realtime.provider]}
    llm = [s.llm.provider, *s.llm.fallback]
    if s.mode == "llm_script":  # the tracks answer; "script" there only says "no chat model"
        llm = [name for name in llm if name != "script"]
    return {
        "asr": [s.asr.provider, *s.asr.fallback],
        "llm": llm,
        "tts": [s.tts.provider, *s.tts.fallback],
    }


def _provider_problems(role: str, name: str, given_at: tuple[str, str], ctx: Context) -> Iterator[Problem]:
    """``given_at``: how the name is given and its JSON path ("asr.fallback", "asr.fallback.1")."""
    from voiceplatform.providers import catalog
    from voiceplatform.providers.registry import UnknownProvider

    label, path = given_at
    registry = catalog.registry(role)
    try:
        cls = registry.load(name)
    except UnknownProvider:
        known = ", ".join(registry.names())
        yield ctx.problem(CONFIG_FILE, f"{label}: unknown provider {name!r} (known: {known})", path)
        return
    except ImportError as exc:
        yield ctx.problem(CONFIG_FILE, f"{label}: provider {name!r} cannot be loaded here: {exc}", path)
        return
    for line in cls.check(ctx.provider_robot):
        file, _, rest = line.partition(": ")
        if rest and file != CONFIG_FILE and (ctx.folder / file).is_file():
            where = rest.split(": ", 1)[0] if ": " in rest else ""
            yield ctx.problem(file, rest, where if not where.startswith("line ") else "")
        else:
            line = line.removeprefix(f"{name}: ").removeprefix(f"{role} provider {name} ")
            first = line.split(": ", 1)[0] if ": " in line else ""
            wheres = (first if "." in first and " " not in first else "", path)
            yield ctx.problem(CONFIG_FILE, f"{role} provider {name!r}: {line}", *wheres)


def check_providers(ctx: Context) -> list[Problem]:
    """Each provider name is one the services know; each builds with the robot's options (and keys)."""
    from voiceplatform.providers import catalog

    problems: list[Problem] = []
    for role, names in _roles(ctx.robot).items():
        for i, name in enumerate(dict.fromkeys(names)):
            if i == 0:
                given_at = (f"{role}.provider", f"{role}.provider")
            else:  # its place in the fallback list (names[0] is the provider)
                given_at = (f"{role}.fallback", f"{role}.fallback.{names.index(name, 1) - 1}")
            problems += _provider_problems(role, name, given_at, ctx)
    s = ctx.robot.settings
    for role, section in (("asr", s.asr.providers), ("llm", s.llm.providers), ("tts", s.tts.providers)):
        for name in section:
            if name not in catalog.registry(role).names():
                where = f"{role}.providers.{name}"
                problems.append(ctx.problem(CONFIG_FILE, f"{where}: options for an unknown provider", where))
    return problems


def check_prompts(ctx: Context) -> list[Problem]:
    """A chat model and a realtime model need a system prompt; topic prompts are named in the config."""
    s = ctx.robot.settings
    roles = _roles(ctx.robot)
    needs_prompt = s.mode == "realtime" or any(n != "script" for n in roles.get("llm", []))
    problems: list[Problem] = []
    if needs_prompt and not ctx.robot.system_prompt:
        what = "missing" if not (ctx.folder / "prompt.txt").is_file() else "empty"
        problems.append(Problem("prompt.txt", f"{what}: the model needs its system prompt"))
    for prompt_id, file_name in s.router.prompts.items():
        if not ctx.robot.prompts.get(prompt_id):
            problems.append(Problem(file_name, f"empty (prompt {prompt_id!r} of router.prompts)"))
    named = {Path(f).as_posix() for f in s.router.prompts.values()}
    prompts_dir = ctx.folder / "prompts"
    if prompts_dir.is_dir():
        for path in sorted(prompts_dir.iterdir()):
            rel = path.relative_to(ctx.folder).as_posix()
            if path.is_file() and rel not in named:
                problems.append(Problem(rel, "not named in router.prompts of config.json, never used"))
    return problems


def check_router(ctx: Context) -> list[Problem]:
    """Every rule phrase has a word to match; the dialog's topics are prompts the robot has."""
    from voiceplatform.text import tokenize

    problems: list[Problem] = []
    for i, rule in enumerate(ctx.robot.settings.router.rules):
        for kind in ("keywords", "examples"):
            for j, phrase in enumerate(getattr(rule, kind)):
                if not tokenize(phrase):
                    where = f"router.rules.{i}.{kind}.{j}"
                    problems.append(ctx.problem(CONFIG_FILE, f"{where}: {phrase!r} has no word", where))
    return problems + _dialog_topics(ctx)


def _dialog_topics(ctx: Context) -> list[Problem]:
    import json

    if "script" not in _roles(ctx.robot).get("llm", []):
        return []
    try:
        data = json.loads(ctx.robot.dialog_path.read_text(encoding="utf-8"))
        states = data["states"]
        intents = [
            (f"states.{n}.intents.{i}", it)
            for n, st in states.items()
            for i, it in enumerate(st.get("intents", []))
        ]
        intents += [(f"global.{i}", it) for i, it in enumerate(data.get("global", []))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # the script provider's own check reports a dialog that does not parse
    file = ctx.robot.settings.dialog_file
    problems = []
    for where, intent in intents:
        topic = intent.get("prompt") if isinstance(intent, dict) else None
        if topic is not None and topic not in ctx.robot.prompts:
            message = f"{where}.prompt: {topic!r} is not a prompt of the robot (router.prompts)"
            problems.append(ctx.problem(file, message, f"{where}.prompt"))
    return problems


def _recording(ctx: Context, wav: str, text_field: str, text: str) -> list[Problem]:
    path = ctx.folder / wav
    if not path.is_file():
        return []
    try:
        read_wav(path)
    except Exception as exc:
        return [Problem(wav, f"not a 16-bit PCM WAV the gateway can play: {exc}")]
    words_file = ctx.folder / (wav + WORDS_SUFFIX)
    said = " ".join(words_file.read_text(encoding="utf-8").split()) if words_file.is_file() else None
    if not text.strip():
        return []
    wanted = " ".join(text.split())
    if said is None:
        message = (
            f"its words are unknown while {text_field} is {wanted!r}: write the words it says into "
            f"{wav}{WORDS_SUFFIX}, or delete it to have {text_field} spoken"
        )
        return [Problem(wav, message)]
    if said != wanted:
        message = (
            f"says {said!r} ({wav}{WORDS_SUFFIX}) but {text_field} is {wanted!r}: record it again "
            f"(and its {wav}{WORDS_SUFFIX}), or delete it to have {text_field} spoken"
        )
        return [Problem(wav, message)]
    return []


def check_recordings(ctx: Context) -> list[Problem]:
    s = ctx.robot.settings
    problems = _recording(ctx, "greeting.wav", "greeting_text", s.greeting_text)
    problems += _recording(ctx, "fallback.wav", "fallback_text", s.fallback_text)
    if (ctx.folder / "fallback.wav").is_file() and not s.fallback_text.strip():
        problems.append(Problem("fallback.wav", "set fallback_text in config.json to the words it says"))
    return problems


MANIFEST_FILE = "tracks/manifest.json"


def check_track_files(folder: Path) -> list[str]:
    """Recordings a dialog.json plays from ``tracks/``: every ``tracks/*.wav`` is a readable WAV."""
    tracks = folder / "tracks"
    if not tracks.is_dir():
        return []
    problems = []
    for path in sorted(tracks.glob("*.wav")):
        try:
            read_wav(path)
        except Exception as exc:
            problems.append(f"tracks/{path.name}: not a 16-bit PCM WAV: {exc}")
    return problems


def check_tracks(ctx: Context) -> list[Problem]:
    # an llm_script robot answers from tracks/: its manifest and every recording it names
    if ctx.robot.settings.mode == "llm_script":
        # "tracks/manifest.json ...: <problem>" or "track 'id': <problem>" (an entry of the manifest)
        manifest_problems = []
        for line in check_manifest(ctx.folder):
            file, _, message = line.partition(": ")
            if line.startswith("tracks/") and message:
                manifest_problems.append(Problem(file, message))
            else:
                manifest_problems.append(Problem(MANIFEST_FILE, line))
        return manifest_problems
    problems = []
    for line in check_track_files(ctx.folder):
        file, _, message = line.partition(": ")
        problems.append(Problem(file, message) if message else Problem("tracks", line))
    return problems


# ---- the lists, in order ---------------------------------------------------------------------------
# what makes a call fail or say the wrong thing: every service refuses a robot with these problems
CHECKERS: list[Checker] = [check_providers, check_router, check_recordings, check_tracks]
# what makes a call work, but not as the author meant (a chat model without its prompt, an unused
# prompt file), and keys (a service sees only its own): `vp check` only
AUTHOR_CHECKERS: list[Checker] = [check_prompts]


def folder_label(folder: Path) -> str:
    """The folder as the author typed it: relative to the working directory when inside it."""
    try:
        return os.path.relpath(folder)  # pathlib has no relative path to a non-child
    except ValueError:
        return str(folder)


def _load_problems(folder: Path, exc: RobotConfigError) -> list[Problem]:
    text = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = (folder / CONFIG_FILE).read_text(encoding="utf-8")
    problems = []
    for raw in exc.problems:
        message = raw.replace("Value error, ", "")
        where = message.split(": ", 1)[0]
        line = line_of(text, where) if text and " " not in where and split_path(where) else None
        if "no robot folder" in message:
            problems.append(Problem("", message))
        elif message.startswith("config.json "):
            problems.append(Problem(CONFIG_FILE, message.removeprefix("config.json "), line))
        else:
            problems.append(Problem(CONFIG_FILE, message, line))
    return problems


def check_robot(path: Path | str, *, author: bool = True, robot: RobotConfig | None = None) -> CheckResult:
    """Check a robot folder (``robot``: already loaded from it). ``author`` (`vp check`): also the
    author's checks and that the cloud providers' keys are in the robot's env chain."""
    folder = Path(path)
    result = CheckResult(folder, folder_label(folder))
    if robot is None:
        try:
            robot = load_robot(folder)
        except RobotConfigError as exc:
            result.problems = _load_problems(folder, exc)
            return result
    result.robot = robot
    ctx = Context(folder, robot, keys=author)
    for checker in CHECKERS + (AUTHOR_CHECKERS if author else []):
        result.problems += checker(ctx)
    result.summary = _summary(robot)
    return result


def _summary(robot: RobotConfig) -> list[str]:
    parts = [f"mode {robot.settings.mode}"]
    parts += [f"{role} {'+'.join(dict.fromkeys(names)) or 'none'}" for role, names in _roles(robot).items()]
    if robot.settings.mode != "realtime" and robot.settings.vad.enabled:
        parts.append(f"vad {robot.settings.vad.provider}")
    if robot.greeting_wav is not None:
        parts.append("greeting.wav")
    elif robot.settings.greeting_text:
        parts.append("greeting spoken from greeting_text")
    tracks = robot.path / "tracks"
    if tracks.is_dir() and any(tracks.glob("*.wav")):
        parts.append(f"{sum(1 for _ in tracks.glob('*.wav'))} tracks")
    return parts
