"""Robot configuration: one folder per robot, validated at load with clear errors.

Priority chain (highest first): the robot's ``config.json`` → the robot's ``.env`` → the process
environment → the root ``.env`` → defaults below. Env layers set config fields through
``ROBOT_<SECTION>__<FIELD>`` keys (``ROBOT_TTS__VOICE=jane``) and carry secrets by name
(``robot.secret("YANDEX_API_KEY")``); secrets never enter config.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voiceplatform.config.phone import DtmfConfig, RecordingConfig

ENV_PREFIX = "ROBOT_"


class RobotConfigError(ValueError):
    def __init__(self, robot: str, problems: list[str]) -> None:
        super().__init__(f"robot {robot!r}: " + "; ".join(problems))
        self.robot = robot
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Per-provider options of a role, by provider name: {"gemini": {"models": [...]}, "yandex": {...}}.
# Each provider validates its own entry (a pydantic model of its own) when it is built, so a typo
# fails that provider loudly instead of being ignored. Secrets never go here: they come from env.
ProviderOptions = dict[str, dict[str, Any]]


class AsrConfig(_Section):
    provider: str = "whisper"
    language: str = "ru-RU"
    # whisper: temperature 0 (fallback temperatures hallucinate), capped output; beam 5 costs about
    # 0.1-0.15 s more per segment than beam 1 on 2 cores (the encoder dominates) and saves 3-5 points
    # of word error rate (bench/bench_hearing.py)
    beam_size: int = Field(default=5, ge=1, le=10)
    max_new_tokens: int = Field(default=96, ge=8, le=440)
    fallback: list[str] = Field(default_factory=list)
    providers: ProviderOptions = Field(default_factory=dict)
    # names, products, terms the robot expects to hear (added to the robot folder's vocabulary.txt,
    # one term per line); whisper gets them as hotwords
    vocabulary: list[str] = Field(default_factory=list)


class LlmConfig(_Section):
    provider: str = "script"
    model: str = ""
    base_url: str = ""
    temperature: float = Field(default=0.5, ge=0.0, le=2.0)
    max_tokens: int = Field(default=80, ge=1, le=4096)
    timeout_s: float = Field(default=20.0, gt=0)
    fallback: list[str] = Field(default_factory=list)
    providers: ProviderOptions = Field(default_factory=dict)
    # a provider that opened its stream but yielded no text by then is abandoned for the next one
    first_token_timeout_s: float = Field(default=8.0, gt=0, le=120)


class TtsConfig(_Section):
    # RHVoice where scripts/install-rhvoice.sh could install it; otherwise the fallbacks speak
    provider: str = "rhvoice"
    voice: str = ""
    # rate the provider synthesizes at; audio is resampled to the call's rate (8k phone, 16k web)
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    fallback: list[str] = Field(default_factory=list)
    providers: ProviderOptions = Field(default_factory=dict)
    # a provider that opened its stream but sent no audio by then is abandoned for the next one
    first_audio_timeout_s: float = Field(default=4.0, gt=0, le=60)

    @model_validator(mode="after")
    def _local_fallback(self) -> TtsConfig:
        # the default voice needs Debian non-free packages: without an explicit chain, the other
        # local voices follow it, so a machine without RHVoice still speaks
        if self.provider == "rhvoice" and "fallback" not in self.model_fields_set:
            self.fallback = ["festival", "espeak"]
        return self


class RealtimeConfig(_Section):
    """mode=realtime: one speech-to-speech session per call (the OpenAI Realtime event protocol)."""

    provider: Literal["yandex", "openai"] = "yandex"
    # yandex: model name inside the folder (gpt://<folder>/<model>); openai: e.g. gpt-realtime
    model: str = ""
    # endpoint override (a proxy, a stand-in); empty: the provider's public endpoint
    url: str = ""
    voice: str = ""
    # the rate asked of the provider for its audio (OpenAI supports only 24000)
    output_sample_rate: int = Field(default=24000, ge=8000, le=48000)
    vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    silence_duration_ms: int = Field(default=500, ge=100, le=5000)
    prefix_padding_ms: int = Field(default=300, ge=0, le=2000)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # reconnects in a row (session expiry, dropped socket) before the call is ended politely
    max_reconnects: int = Field(default=3, ge=0, le=20)


class VadConfig(_Section):
    enabled: bool = True
    provider: Literal["energy", "silero"] = "energy"
    energy_threshold: float = Field(default=200.0, ge=0)
    # silero speech probability thresholds (hysteresis)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    silence_frames: int = Field(default=25, ge=1, le=500)
    min_speech_frames: int = Field(default=5, ge=1, le=500)
    pre_roll_ms: int = Field(default=200, ge=0, le=2000)
    # end of turn: after pause_ms of silence the turn is "paused" (vad.speech_paused); without an
    # end-of-turn model it ends after silence_frames, as before. With one ("auto": with silero only)
    # it ends pause_ms + eot_short_ms after speech when the model finds the utterance complete
    # (probability >= eot_threshold), else after eot_long_ms of silence in all
    pause_ms: int = Field(default=200, ge=20, le=5000)
    eot_model: Literal["auto", "none", "smart_turn"] = "auto"
    eot_threshold: float = Field(default=0.5, gt=0, lt=1)
    eot_short_ms: int = Field(default=100, ge=0, le=5000)
    eot_long_ms: int = Field(default=1000, ge=20, le=10000)
    # a turn longer than this is cut (vad.speech_ended truncated=True)
    max_turn_s: float = Field(default=30.0, gt=0, le=600)


class BargeInConfig(_Section):
    enabled: bool = True
    # caller speech shorter than this (after VAD confirmation) does not interrupt the robot
    min_speech_ms: int = Field(default=0, ge=0, le=5000)


class TurnsConfig(_Section):
    """Turn-taking at the gateway (see voiceplatform.gateway.turn_policy for the rules)."""

    # the caller speaks again within this long after an utterance ended, before its reply was
    # heard: one utterance (the pending reply is cancelled, both pieces are recognized together)
    continuation_gap_ms: int = Field(default=2500, ge=0, le=10_000)
    # ... or within this long after the reply started playing
    continuation_played_ms: int = Field(default=1000, ge=0, le=5000)
    # caller speech over the robot pauses it; speech longer than this is a barge-in at once,
    # shorter speech is a barge-in only if its transcript is more than a backchannel ("угу")
    backchannel_max_ms: int = Field(default=900, ge=0, le=5000)
    # how long a paused reply waits for the transcript of a short caller utterance
    backchannel_transcript_wait_ms: int = Field(default=1500, ge=100, le=10_000)
    resume_on_backchannel: bool = True
    # a reply to an utterance that ended unfinished ("... и", "... что", "э-э") waits this long
    incomplete_hold_ms: int = Field(default=700, ge=0, le=5000)
    # silence after the robot finished before a re-prompt (0: never)
    no_input_s: float = Field(default=10.0, ge=0, le=300)


class DeadlinesConfig(_Section):
    """How long the gateway waits for each stage of a reply before the robot's fallback line
    (``fallback.wav``) is played instead of silence (see voiceplatform.gateway.deadlines).

    Sized above the redelivery of a request whose worker died or hung (about 2 s) plus the stage's
    own slow case, so a retried request still answers in time (docs/turn-taking.md). Pipeline
    robots only: a realtime model judges and voices its turns itself.
    """

    enabled: bool = True
    # the caller's turn ended (asr.final with words, or a re-prompt began) → first llm.sentence
    # (prompt router and llm together)
    reply_ms: int = Field(default=6000, ge=500, le=120_000)
    # an llm.sentence → the next llm.sentence or llm.done
    sentence_ms: int = Field(default=6000, ge=500, le=120_000)
    # an llm.sentence → its first tts.audio chunk, and a chunk → the next until the sentence's last
    audio_ms: int = Field(default=5000, ge=500, le=120_000)


class RouteRule(_Section):
    prompt: str
    keywords: list[str] = Field(default_factory=list)
    # phrases meaning this topic, matched by a sentence encoder when no keyword is found
    examples: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_keywords_or_examples(self) -> RouteRule:
        if not self.keywords and not self.examples:
            raise ValueError(f"rule for prompt {self.prompt!r} needs keywords or examples")
        return self


class RouterConfig(_Section):
    """Topic-driven prompts (seed 004): keywords switch the system prompt on every user message."""

    default_prompt: str = "default"
    # prompt id -> file name in the robot folder (prompts/<id>.txt); "default" may be prompt.txt
    prompts: dict[str, str] = Field(default_factory=dict)
    rules: list[RouteRule] = Field(default_factory=list)
    # examples: a phrase switches the topic only when at least this similar to one of them
    min_similarity: float = Field(default=0.55, gt=0, lt=1)

    @model_validator(mode="after")
    def _rules_name_known_prompts(self) -> RouterConfig:
        known = set(self.prompts) | {self.default_prompt}
        unknown = sorted({r.prompt for r in self.rules} - known)
        if unknown:
            raise ValueError(f"router rules name unknown prompts: {', '.join(unknown)}")
        return self


class RobotSettings(_Section):
    name: str = ""
    ws_port: int | None = None
    # numbers (DNIS) that reach this robot through gateway-fs; the dialplan's metadata may also
    # name the robot directly
    phone_numbers: list[str] = Field(default_factory=list)
    mode: Literal["pipeline", "realtime", "llm_script"] = "pipeline"
    language: str = "ru"
    greeting_text: str = ""
    # the words of the robot's fallback.wav, said when a stage misses its deadline (empty: the
    # platform's default line, whose words are voiceplatform.gateway.fallback_line.DEFAULT_TEXT)
    fallback_text: str = ""
    asr: AsrConfig = Field(default_factory=AsrConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    tts: TtsConfig = Field(default_factory=TtsConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    barge_in: BargeInConfig = Field(default_factory=BargeInConfig)
    turns: TurnsConfig = Field(default_factory=TurnsConfig)
    deadlines: DeadlinesConfig = Field(default_factory=DeadlinesConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    dtmf: DtmfConfig = Field(default_factory=DtmfConfig)
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    # file (in the robot folder) of the deterministic dialogue script used by llm.provider=script
    dialog_file: str = "dialog.json"
    max_call_s: int = Field(default=900, ge=10)


@dataclass(frozen=True)
class RobotConfig:
    """A loaded robot: validated settings, its folder, its prompts and its secrets."""

    name: str
    path: Path
    settings: RobotSettings
    system_prompt: str
    prompts: dict[str, str]
    env: dict[str, str] = field(repr=False)

    def secret(self, name: str) -> str | None:
        value = self.env.get(name)
        return value or None

    def prompt_text(self, prompt_id: str) -> str:
        return self.prompts.get(prompt_id, self.system_prompt)

    @property
    def greeting_wav(self) -> Path | None:
        p = self.path / "greeting.wav"
        return p if p.is_file() else None

    @property
    def fallback_wav(self) -> Path | None:
        p = self.path / "fallback.wav"
        return p if p.is_file() else None

    @property
    def dialog_path(self) -> Path:
        return self.path / self.settings.dialog_file


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_to_config(env: dict[str, str]) -> dict[str, Any]:
    """``ROBOT_TTS__VOICE=jane`` → ``{"tts": {"voice": "jane"}}`` (values parsed as JSON if they can be)."""
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except (json.JSONDecodeError, TypeError):
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        problems.append(f"{where}: {err['msg']}")
    return problems


def load_robot(path: Path | str, root_env: Path | None = None) -> RobotConfig:
    """Load and validate a robot folder; raise ``RobotConfigError`` listing every problem."""
    folder = Path(path)
    name = folder.name
    if not folder.is_dir():
        raise RobotConfigError(name, [f"no robot folder at {folder}"])
    cfg_file = folder / "config.json"
    try:
        config_json = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RobotConfigError(name, ["config.json is missing"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobotConfigError(name, [f"config.json is not valid JSON: {exc}"]) from None
    if not isinstance(config_json, dict):
        raise RobotConfigError(name, ["config.json must hold a JSON object"])

    root_env_file = root_env if root_env is not None else folder.parent.parent / ".env"
    env = {**_read_env_file(root_env_file), **os.environ, **_read_env_file(folder / ".env")}
    data = _deep_merge(_env_to_config(env), config_json)
    data.setdefault("name", name)
    try:
        settings = RobotSettings.model_validate(data)
    except ValidationError as exc:
        raise RobotConfigError(name, _format_errors(exc)) from None

    problems: list[str] = []
    prompt_file = folder / "prompt.txt"
    system_prompt = prompt_file.read_text(encoding="utf-8").strip() if prompt_file.is_file() else ""
    prompts: dict[str, str] = {settings.router.default_prompt: system_prompt}
    for prompt_id, file_name in settings.router.prompts.items():
        p = folder / file_name
        if not p.is_file():
            problems.append(f"router.prompts.{prompt_id}: file {file_name} not found")
            continue
        prompts[prompt_id] = p.read_text(encoding="utf-8").strip()
    # llm_script robots choose among recordings (tracks/manifest.json), not a dialog script
    needs_script = settings.mode == "pipeline" and settings.llm.provider == "script"
    if needs_script and not (folder / settings.dialog_file).is_file():
        problems.append(f"llm.provider is 'script' but {settings.dialog_file} is missing")
    if settings.mode == "llm_script" and not (folder / "tracks" / "manifest.json").is_file():
        problems.append("mode is 'llm_script' but tracks/manifest.json is missing")
    if problems:
        raise RobotConfigError(name, problems)
    return RobotConfig(
        name=settings.name or name,
        path=folder,
        settings=settings,
        system_prompt=system_prompt,
        prompts=prompts,
        env=env,
    )
