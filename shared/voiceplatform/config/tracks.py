"""Recorded replies of an ``llm_script`` robot: ``tracks/manifest.json``, its checks and its audio.

A robot in ``mode: "llm_script"`` answers each caller turn by playing one recording from its
``tracks/`` folder. The manifest says what each recording says and when to play it::

    {
      "fallthrough": "tts",
      "min_similarity": 0.5,
      "tracks": [
        {"id": "hours", "file": "hours.wav", "text": "Мы работаем с девяти до двадцати.",
         "when": "the caller asks about opening hours",
         "examples": ["когда вы работаете", "до скольки открыты"]},
        {"id": "operator", "file": "operator.wav", "text": "Соединяю с оператором.",
         "when": "the caller wants a person", "examples": ["позовите человека"],
         "transfer_to": "operators"}
      ]
    }

``text`` is exactly what the recording says: it is what the call records and the dialogue history
hold, and what TTS says if the file cannot be played. ``fallthrough`` is what happens when no track
fits: ``"tts"`` (a generative provider's own answer, or the robot's ``fallback_text``, synthesized)
or the id of a track to play. Turns without words: a track's ``dtmf`` (``"1"``, or a list such as
``["0", "0#"]``, as in ``dialog.json``) are the key sequences that choose it, and ``no_input`` names
the track played when the caller stays silent (without them both fall through, as words that fit
no track do). Recordings: WAV, 16-bit PCM,
mono, 8-48 kHz (resampled to the call's rate when played).

One module holds it all: ``check_tracks`` for ``vp check`` (one line per problem),
``load_tracks`` for the services (cached per manifest version, raises with the same lines), and
``track_pcm`` (a recording at a call's rate, decoded once per file version and rate).
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from voiceplatform.audio import read_wav, resample

TRACKS_DIR = "tracks"
MANIFEST = "manifest.json"
FALLTHROUGH_TTS = "tts"
# the caller's words must be at least this similar (cosine, sentence encoder) to a track's "when"
# or one of its examples; measured on the llm_script_russian paraphrases (docs/robots.md)
DEFAULT_MIN_SIMILARITY = 0.5
MIN_RATE, MAX_RATE = 8000, 48000
MAX_TRACK_S = 120.0


class TracksError(ValueError):
    def __init__(self, robot_dir: Path, problems: list[str]) -> None:
        super().__init__(f"{robot_dir.name}/{TRACKS_DIR}/{MANIFEST}: " + "; ".join(problems))
        self.problems = problems


class Track(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    file: str = Field(min_length=1)
    text: str
    when: str = ""
    examples: list[str] = Field(default_factory=list)
    # key sequences that choose this track (the caller pressed them: a "dtmf" turn)
    dtmf: tuple[Annotated[str, Field(pattern=r"^[0-9*#A-D]{1,64}$")], ...] = ()
    # after this track: hang up, or hand the caller over to this destination
    end_call: bool = False
    transfer_to: str = ""

    @field_validator("dtmf", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class TrackManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tracks: list[Track]
    fallthrough: str = FALLTHROUGH_TTS
    min_similarity: float = Field(default=DEFAULT_MIN_SIMILARITY, gt=0, lt=1)
    # the track played when the caller says nothing ("": the fallthrough)
    no_input: str = ""

    def by_id(self, track_id: str) -> Track | None:
        return next((t for t in self.tracks if t.id == track_id), None)

    def by_dtmf(self, keys: str) -> Track | None:
        """The track the caller chose on the keypad (None: no track has these keys)."""
        return next((t for t in self.tracks if keys in t.dtmf), None)

    @property
    def fallthrough_track(self) -> Track | None:
        """The track played when none fits (None: ``"tts"``)."""
        return None if self.fallthrough == FALLTHROUGH_TTS else self.by_id(self.fallthrough)


@dataclass(frozen=True)
class Tracks:
    """A robot's loaded manifest and where its recordings are."""

    folder: Path
    manifest: TrackManifest

    def path_of(self, track: Track) -> Path:
        return self.folder / track.file


def manifest_path(robot_dir: Path) -> Path:
    return robot_dir / TRACKS_DIR / MANIFEST


def _read_manifest(robot_dir: Path) -> tuple[TrackManifest | None, list[str]]:
    path = manifest_path(robot_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{TRACKS_DIR}/{MANIFEST} is missing"]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [f"{TRACKS_DIR}/{MANIFEST} is not valid JSON: {exc}"]
    try:
        return TrackManifest.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(root)"
            problems.append(f"{TRACKS_DIR}/{MANIFEST} {where}: {err['msg']}")
        return None, problems


def wav_problem(path: Path) -> str:
    """Why a recording cannot be played ("" when it can)."""
    if not path.is_file():
        return "file not found"
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate, frames = (
                wav.getsampwidth(),
                wav.getnchannels(),
                wav.getframerate(),
                wav.getnframes(),
            )
            if wav.getcomptype() != "NONE":
                return f"compressed WAV ({wav.getcompname()}); use 16-bit PCM"
    except (wave.Error, EOFError, OSError) as exc:
        return f"not a readable WAV file ({exc})"
    if width != 2:
        return f"{8 * width}-bit samples; use 16-bit PCM"
    if channels != 1:
        return f"{channels} channels; use mono"
    if not MIN_RATE <= rate <= MAX_RATE:
        return f"sample rate {rate} Hz; use {MIN_RATE}-{MAX_RATE} Hz"
    if frames == 0:
        return "no audio in it"
    if frames / rate > MAX_TRACK_S:
        return f"{frames / rate:.0f} s long; at most {MAX_TRACK_S:.0f} s"
    return ""


def _track_problems(robot_dir: Path, manifest: TrackManifest, with_files: bool = True) -> list[str]:
    folder = (robot_dir / TRACKS_DIR).resolve()
    problems: list[str] = []
    seen: set[str] = set()
    keys_seen: dict[str, str] = {}
    for n, track in enumerate(manifest.tracks):
        name = f"track {track.id!r}" if track.id else f"track #{n + 1}"
        if track.id in seen:
            problems.append(f"{name}: duplicate id")
        seen.add(track.id)
        if not track.text.strip():
            problems.append(f"{name}: empty text (write exactly what the recording says)")
        chosen_by_words = track.when.strip() or any(e.strip() for e in track.examples)
        chosen_otherwise = track.dtmf or track.id in (manifest.fallthrough, manifest.no_input)
        if not chosen_by_words and not chosen_otherwise:
            problems.append(f"{name}: no 'when', no examples and no dtmf, it can never be chosen")
        for keys in track.dtmf:
            if keys in keys_seen:
                problems.append(f"{name}: dtmf {keys!r} already chooses track {keys_seen[keys]!r}")
            keys_seen.setdefault(keys, track.id)
        path = (folder / track.file).resolve()
        if not path.is_relative_to(folder):
            problems.append(f"{name}: file {track.file!r} is outside {TRACKS_DIR}/")
            continue
        problem = wav_problem(path) if with_files else ""
        if problem:
            problems.append(f"{name}: {TRACKS_DIR}/{track.file}: {problem}")
    if not manifest.tracks:
        problems.append(f"{TRACKS_DIR}/{MANIFEST}: no tracks")
    if manifest.fallthrough != FALLTHROUGH_TTS and manifest.fallthrough not in seen:
        problems.append(
            f"{TRACKS_DIR}/{MANIFEST}: fallthrough {manifest.fallthrough!r} is neither "
            f"'{FALLTHROUGH_TTS}' nor a track id"
        )
    if manifest.no_input and manifest.no_input not in seen:
        problems.append(f"{TRACKS_DIR}/{MANIFEST}: no_input {manifest.no_input!r} is not a track id")
    return problems


def check_tracks(robot_dir: Path) -> list[str]:
    """Every problem of a robot's track manifest and recordings, one human line each ([]: fine)."""
    manifest, problems = _read_manifest(robot_dir)
    if manifest is None:
        return problems
    return _track_problems(robot_dir, manifest)


_loaded: dict[str, tuple[float, Tracks]] = {}


def load_tracks(robot_dir: Path) -> Tracks:
    """The robot's manifest, checked; reloaded when the manifest file changes. Raises TracksError.

    Only the manifest is checked here (a recording that fails later is said by TTS from its text);
    ``check_tracks`` also checks every recording.
    """
    path = manifest_path(robot_dir)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise TracksError(robot_dir, [f"{TRACKS_DIR}/{MANIFEST} is missing"]) from None
    key = str(path)
    cached = _loaded.get(key)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    manifest, problems = _read_manifest(robot_dir)
    if manifest is not None:
        problems = _track_problems(robot_dir, manifest, with_files=False)
    if manifest is None or problems:
        raise TracksError(robot_dir, problems)
    tracks = Tracks(robot_dir / TRACKS_DIR, manifest)
    _loaded[key] = (mtime, tracks)
    return tracks


_pcm: dict[tuple[str, float, int], bytes] = {}
PCM_CACHE_ENTRIES = 256


def track_pcm(path: Path, rate: int) -> bytes:
    """16-bit PCM of a recording at ``rate``; decoded once per file version and rate.

    Raises ValueError (with the reason) for a file that cannot be played.
    """
    mtime = path.stat().st_mtime  # FileNotFoundError is an OSError: the caller's "cannot play"
    key = (str(path), mtime, rate)
    cached = _pcm.get(key)
    if cached is not None:
        return cached
    problem = wav_problem(path)
    if problem:
        raise ValueError(f"{path.name}: {problem}")
    samples, wav_rate = read_wav(path)
    pcm = resample(samples, wav_rate, rate).astype("<i2").tobytes()
    if len(_pcm) >= PCM_CACHE_ENTRIES:
        _pcm.pop(next(iter(_pcm)))
    _pcm[key] = pcm
    return pcm
