"""Typed wire messages.

Every message is a msgpack map with readable keys: ``type`` (stable dotted name), ``v`` (version of
that type), ``call_id``, ``ts_ms`` (wall clock of creation) and, on everything produced for one
utterance or bot reply, ``turn_id``. Evolution rules: adding a field with a default keeps ``v``;
removing or re-typing one bumps it. Decoders ignore unknown keys and reject a ``v`` newer than they
know (see ``codec``). Audio is msgpack bin, little-endian signed 16-bit mono PCM.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

from voiceplatform.clock import now_ms

FRAME_MS = 20
SUPPORTED_SAMPLE_RATES = (8000, 16000)


def frame_bytes(sample_rate: int, frame_ms: int = FRAME_MS) -> int:
    """Size in bytes of one mono 16-bit PCM frame."""
    return sample_rate * frame_ms // 1000 * 2


class Message(msgspec.Struct, kw_only=True, tag_field="type"):
    """Base of every wire message. ``VERSION`` is the newest version this code understands."""

    VERSION: ClassVar[int] = 1

    call_id: str
    v: int = 1
    ts_ms: int = msgspec.field(default_factory=now_ms)

    @property
    def type_name(self) -> str:
        tag = type(self).__struct_config__.tag
        return str(tag)


# ---- call lifecycle ---------------------------------------------------------------------------


class CallStarted(Message, tag="call.started"):
    robot: str
    channel: Literal["web", "phone"]
    sample_rate: int
    caller: str = ""
    mode: str = "pipeline"
    gateway_id: str = ""
    # per-call variables of an outbound call (name, debt, ...): ``{name}`` in the robot's texts
    variables: dict[str, str] = msgspec.field(default_factory=dict)


# ``CallEnded.reason`` the recorder publishes for a call whose gateway died without ending it
GATEWAY_LOST = "gateway_lost"


class CallEnded(Message, tag="call.ended"):
    reason: str
    duration_ms: int = 0
    turns: int = 0
    # reason "transferred": where the caller was handed over (the ``control.transfer`` destination)
    transfer_to: str = ""


class CallDialed(Message, tag="call.dialed"):
    """One outbound attempt's outcome (gateway-fs), on the call id its stream has or would have had.

    ``outcome``: answered | busy | no_answer | failed; ``cause``: FreeSWITCH's hangup cause."""

    campaign_id: str
    number: str
    attempt: int
    outcome: str
    cause: str = ""


class CallAmd(Message, tag="call.amd"):
    """Answering-machine detection on an answered outbound call, and what the gateway did about it.

    ``result``: human | voicemail | ivr | silence; ``reason``: words | long_speech | short_hello |
    silence | timeout; ``action``: greeting | voicemail_message | hangup."""

    result: str
    reason: str
    after_ms: int
    action: str
    words: str = ""


class ControlHangup(Message, tag="control.hangup"):
    """Ask the gateway to end the call; ``graceful`` finishes what is queued for playout first."""

    reason: str = "robot"
    graceful: bool = True


class ControlTransfer(Message, tag="control.transfer"):
    """Hand the caller to a human: the phone gateway transfers the call to ``destination``."""

    destination: str
    reason: str = ""
    # what the person taking the call should know (last turns, intent, caller facts); the phone
    # gateway sets each as a channel variable ``vp_<key>`` before it transfers
    summary: dict[str, str] = msgspec.field(default_factory=dict)


class ControlRecord(Message, tag="control.record"):
    """Start or stop recording the call's audio to a file (phone gateway: ``uuid_record``)."""

    action: Literal["start", "stop"]
    path: str = ""


class CallDtmf(Message, tag="call.dtmf"):
    """Keypad digits the caller pressed (phone calls), one event per key as FreeSWITCH reports it.

    The gateway also collects the keys into a caller turn: an ``asr.final`` with ``dtmf`` set."""

    digits: str


class CallRecording(Message, tag="call.recording"):
    """A recording of the call started or stopped: FreeSWITCH's file (``uuid_record``), or the
    gateway's stereo WAV of every call (``voiceplatform.gateway.recording``: ``format``, ``channels``,
    and on ``stop`` the ``duration_ms``)."""

    action: Literal["start", "stop"]
    path: str
    format: str = ""  # "wav"; "" when the gateway does not know (FreeSWITCH's file)
    channels: int = 0  # 2: caller left, robot right; 0 when unknown
    duration_ms: int | None = None  # on "stop", when the writer knows it


# ---- per-call ownership of streaming stages -----------------------------------------------------


class AssignRequest(Message, tag="assign.request"):
    """``epoch`` counts the call's assignments of ``role`` (1 = the first); the owner stamps it on
    every event it publishes, so the gateway and consumers drop a replaced owner's late events.
    ``fence``: the current epoch of every role of the call. ``replay``: the gateway will send the
    caller audio since the last confirmed turn end on ``audio.replay.<role>`` (a re-assignment); the
    owner takes live audio only after it. ``variables``: the call's per-call variables (outbound
    calls, as on ``call.started``), for an owner that voices the robot itself (realtime)."""

    role: str
    robot: str
    sample_rate: int
    channel: str = "web"
    epoch: int = 0
    fence: dict[str, int] = msgspec.field(default_factory=dict)
    replay: bool = False
    variables: dict[str, str] = msgspec.field(default_factory=dict)


class AssignReply(Message, tag="assign.reply"):
    role: str
    accepted: bool
    instance_id: str
    reason: str = ""


class OwnerReleased(Message, tag="assign.released"):
    """A stateful worker gives a call back (drain on SIGTERM); the gateway re-assigns at once."""

    role: str
    instance_id: str
    reason: str = "draining"


class OwnerChanged(Message, tag="assign.changed"):
    """On the call's lifecycle subject: ``role`` of this call is now owned by ``instance_id`` under
    ``epoch``. An owner holding the call under an older epoch stops it without publishing more."""

    role: str
    instance_id: str
    epoch: int


class ResumeTurn(msgspec.Struct, kw_only=True):
    """A caller turn the gateway has seen start but not yet confirmed (no ``asr.final``)."""

    turn_id: str
    start_ms: int
    end_ms: int = -1  # -1: still open (no vad.speech_ended yet)
    speech_ms: int = 0
    eot_probability: float = -1.0
    truncated: bool = False
    ended_ts_ms: int = 0


class AudioReplay(Message, tag="audio.replay"):
    """Caller frames ``first_seq``, ``first_seq + 1``... re-sent to a call's new owner, batched.

    The batch with ``last`` closes the replay: ``next_seq`` is the first frame that comes live on
    ``audio.in``. Every batch names the turns not yet confirmed that the replay covers (``turns``).
    """

    role: str
    epoch: int
    first_seq: int
    sample_rate: int
    frames: list[bytes] = msgspec.field(default_factory=list)
    last: bool = False
    next_seq: int = 0
    turns: list[ResumeTurn] = msgspec.field(default_factory=list)


class StageLoad(msgspec.Struct, kw_only=True):
    """One stage's load in one process (``voiceplatform.load``), as its presence carries it.

    ``calls_owned``/``capacity``: streaming stages and gateways (0/0 elsewhere). ``queue_pending`` /
    ``queue_ack_pending``: a work stage's shared consumer (-1: not a work stage, or not read yet).
    ``turn_p50_ms``/``turn_p95_ms`` over the ``turns`` this process saw in the last minute (None:
    none)."""

    stage: str
    calls_owned: int = 0
    capacity: int = 0
    queue_pending: int = -1
    queue_ack_pending: int = -1
    turns: int = 0
    turn_p50_ms: int | None = None
    turn_p95_ms: int | None = None


class WorkerHeartbeat(Message, tag="worker.heartbeat"):
    """Liveness of one worker instance and the calls it owns. ``call_id`` is unused (empty).

    As presence (``subjects.presence``): ``since_ms`` is the wall clock at which this process
    started (0 from older senders), so a gateway restarted under the same ``instance_id`` is told
    apart from its previous life; ``ready`` is False while the instance is alive but takes no work
    (starting, missing a stage, draining). Older senders announced only when ready. ``load``: the
    process's load per stage (empty from older senders and on owners' heartbeats).
    """

    role: str
    instance_id: str
    calls: list[str] = msgspec.field(default_factory=list)
    capacity: int = 0
    since_ms: int = 0
    ready: bool = True
    load: list[StageLoad] = msgspec.field(default_factory=list)


# ---- audio ----------------------------------------------------------------------------------------


class AudioChunk(Message, tag="audio.chunk"):
    """Caller audio from a gateway: one 20 ms frame (frame number ``seq``).

    v2: ``pcm`` may hold several consecutive frames, ``seq`` being the first one's (a gateway set to
    send fewer, larger messages: ``VP_FS_FRAMES_PER_MESSAGE``). Senders stamp v2 only on such
    chunks, so a single frame stays readable by v1 receivers (docs/architecture.md#caller-audio).
    """

    VERSION: ClassVar[int] = 2

    seq: int
    sample_rate: int
    pcm: bytes

    def problem(self, expected_rate: int) -> str | None:
        """Why this chunk must be dropped, as a metric label, or None when it is good."""
        if self.sample_rate != expected_rate:
            return "wrong_sample_rate"
        size = frame_bytes(expected_rate)
        if len(self.pcm) != size and (self.v < 2 or not self.pcm or len(self.pcm) % size):
            return "wrong_frame_size"
        return None

    def frames(self) -> list[tuple[int, bytes]]:
        """``(seq, pcm)`` of each frame, in order (call after ``problem`` found none)."""
        size = frame_bytes(self.sample_rate)
        if len(self.pcm) == size:
            return [(self.seq, self.pcm)]
        return [
            (self.seq + i, self.pcm[at : at + size]) for i, at in enumerate(range(0, len(self.pcm), size))
        ]


class TtsAudio(Message, tag="tts.audio"):
    """Synthesized robot audio for sentence ``index`` of bot turn ``turn_id``, at the call's rate.

    ``last`` closes the sentence; a sentence may arrive as any number of chunks.
    """

    turn_id: str
    index: int
    seq: int
    sample_rate: int
    pcm: bytes
    last: bool = False
    text: str = ""
    provider: str = ""


class PlaybackStarted(Message, tag="playback.started"):
    """The gateway started playing a bot turn (first audio frame sent to the caller)."""

    turn_id: str


# ---- speech detection and recognition -------------------------------------------------------------


class VadSpeechStarted(Message, tag="vad.speech_started"):
    """Caller speech confirmed. ``turn_id`` names the new utterance; downstream work carries it."""

    turn_id: str
    audio_offset_ms: int
    epoch: int = 0  # the owner's assignment epoch (see AssignRequest); 0: not fenced


class VadSpeechEnded(Message, tag="vad.speech_ended"):
    """The caller's turn is over (the end-of-turn decision, not just a silence).

    ``eot_probability``: the end-of-turn model's probability that the utterance was complete (-1:
    no model ran); ``truncated``: the turn hit the robot's cap on turn length and was cut there.
    """

    turn_id: str
    audio_offset_ms: int
    speech_ms: int
    eot_probability: float = -1.0
    truncated: bool = False
    epoch: int = 0  # the owner's assignment epoch (see AssignRequest); 0: not fenced


class VadSpeechPaused(Message, tag="vad.speech_paused"):
    """The caller paused inside turn ``turn_id``; speech so far ends at ``audio_offset_ms``.

    Not an end of turn: either ``vad.speech_resumed`` follows (same ``turn_id``) or
    ``vad.speech_ended`` with the same ``audio_offset_ms``. Stages may start work on the speech so
    far (speculative recognition) and must drop it without a trace on a resume.
    """

    turn_id: str
    audio_offset_ms: int
    speech_ms: int
    eot_probability: float = -1.0
    epoch: int = 0  # the owner's assignment epoch (see AssignRequest); 0: not fenced


class VadSpeechResumed(Message, tag="vad.speech_resumed"):
    """The caller went on speaking after ``vad.speech_paused``: the turn continues."""

    turn_id: str
    audio_offset_ms: int
    epoch: int = 0  # the owner's assignment epoch (see AssignRequest); 0: not fenced


class AsrPartial(Message, tag="asr.partial"):
    turn_id: str
    text: str


class AsrFinal(Message, tag="asr.final"):
    turn_id: str
    text: str
    language: str = "ru"
    audio_ms: int = 0
    speech_end_ts_ms: int = 0
    processing_ms: int = 0
    provider: str = ""
    # False when a realtime model already answers this utterance: recorded and shown, not routed
    route: bool = True
    # earlier caller turns whose audio this transcript includes (continuation: one utterance)
    merged: list[str] = msgspec.field(default_factory=list)
    epoch: int = 0  # the owner's assignment epoch (see AssignRequest); 0: not fenced
    # the text is keypad digits the caller pressed (published by the gateway, no ASR involved)
    dtmf: bool = False


# ---- dialogue ------------------------------------------------------------------------------------


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str
    turn_id: str = ""
    interrupted: bool = False


class PromptSwitched(Message, tag="prompt.switched"):
    turn_id: str
    from_prompt: str
    to_prompt: str
    matched: str = ""


class LlmRequest(Message, tag="llm.request"):
    """One bot turn to generate, published by the prompt-router to the LLM queue group."""

    turn_id: str
    robot: str
    prompt_id: str
    system_prompt: str
    history: list[ChatMessage]
    user_text: str
    sample_rate: int
    speech_end_ts_ms: int = 0
    dialog_state: str = ""
    # "" for a caller utterance; "no_input" when the caller stayed silent (user_text is "");
    # "dtmf" when the caller pressed keys (user_text is the digits, end key left out)
    event: str = ""
    # per-call variables (call.started): a scripted reply's ``{name}`` is filled from them (the
    # system prompt already is)
    variables: dict[str, str] = msgspec.field(default_factory=dict)


class LlmSentence(Message, tag="llm.sentence"):
    """A complete sentence of the bot reply, ready for TTS (sentence-streaming)."""

    turn_id: str
    index: int
    text: str
    robot: str
    sample_rate: int
    last: bool = False
    # False when the sentence is already being spoken (realtime mode): recorded and shown, not synthesized
    synthesize: bool = True
    # llm_script mode: the id of the robot's recording to play instead of synthesizing; ``text`` is
    # what that recording says (voiceplatform.config.tracks)
    track: str = ""


class LlmDone(Message, tag="llm.done"):
    turn_id: str
    text: str
    sentences: int
    interrupted: bool = False
    provider: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dialog_state: str = ""
    hangup: bool = False
    # transfer the caller to this destination (number or queue) once the reply has been played
    transfer_to: str = ""
    # the intent the dialogue engine recognized ("" when it does not say, as a free LLM)
    intent: str = ""


INTERRUPT_REASONS = ("barge_in", "continued", "superseded", "backchannel", "call_ended", "deadline")


class ControlInterrupt(Message, tag="control.interrupt"):
    """Stop bot turn ``turn_id`` now. ``played_text`` is what the caller actually heard.

    ``reason`` (decided once, by the gateway that owns the call's turns):

    - ``barge_in``: the caller (turn ``by_turn_id``) spoke over the robot;
    - ``continued``: the caller went on with the same utterance in ``by_turn_id``; that turn's
      transcript covers this turn's audio too, so this turn's caller text leaves the dialogue;
    - ``superseded``: a newer caller turn (``by_turn_id``) came before this reply was heard;
    - ``backchannel``: this caller turn was only "угу"/noise while the robot spoke: its reply is
      dropped and its text leaves the dialogue (``by_turn_id`` is empty);
    - ``call_ended``: the call ended before the reply finished;
    - ``deadline``: a stage of the reply missed the gateway's deadline (a ``stage.error`` with kind
      ``deadline`` says which); the robot's fallback line is said instead, the rest is not wanted.
    """

    turn_id: str
    by_turn_id: str = ""
    played_ms: int = 0
    played_text: str = ""
    reason: str = "barge_in"

    @property
    def caller_text_dropped(self) -> bool:
        """The caller's words of ``turn_id`` are not part of the dialogue (merged or a backchannel)."""
        return self.reason in ("continued", "backchannel")


# ---- metrics and errors --------------------------------------------------------------------------


class TurnMetrics(Message, tag="turn.metrics"):
    """Per-turn timestamps measured once (at the gateway, where the turn is heard) and stored as-is.

    Every ``*_ts_ms`` is wall clock; 0 means the stage did not happen (for example no audio played).
    """

    turn_id: str
    user_text: str = ""
    bot_text: str = ""
    speech_end_ts_ms: int = 0
    asr_final_ts_ms: int = 0
    first_sentence_ts_ms: int = 0
    first_audio_ts_ms: int = 0
    first_played_ts_ms: int = 0
    interrupted: bool = False
    played_text: str = ""
    # how the bot turn ended: "played", "cut" (barge-in), "continued", "superseded", "backchannel",
    # "no_reply" (nothing to say), "call_ended", "fallback" (a stage missed its deadline: the
    # fallback line was said instead of the rest); "" from gateways older than this field
    outcome: str = ""
    # llm_script mode: the id of the recorded track the reply played ("" for a synthesized reply)
    track: str = ""


class CallNoInput(Message, tag="call.no_input"):
    """The caller said nothing for ``silence_ms`` after the robot finished: a re-prompt turn.

    Published by the gateway on the lifecycle subject with a fresh ``turn_id`` for the robot's
    re-prompt; ``count`` is the number of silences in a row (1 for the first).
    """

    turn_id: str
    silence_ms: int
    count: int = 1


class StageError(Message, tag="stage.error"):
    """A stage failed a turn; the call goes on. ``retryable`` mirrors the provider error tree."""

    stage: str
    kind: str
    detail: str
    turn_id: str = ""
    retryable: bool = False


class ProviderUsage(Message, tag="provider.usage"):
    """What one provider attempt consumed, for cost; published on the call's lifecycle subject.

    One message per attempt that reached the provider, failed, stalled and cancelled ones included
    (vendors bill them): a fallback chain that failed over once gives two. Amounts are what was sent
    to (or, for tokens, reported by) that provider in that attempt; 0 when not applicable or unknown.

    - ``stage``: ``"asr"``, ``"llm"``, ``"tts"`` or ``"realtime"`` (a plain string, so a recorder
      older than a new stage still records it);
    - ``provider``: the provider's name as configured (``"yandex"``, ``"gemini"``, ``"whisper"``);
    - ``model``: the model that answered when the provider reports it (a Gemini cascade), else "";
    - ``audio_ms``: audio handed to the provider (ASR: the segment; realtime: caller audio);
    - ``prompt_tokens`` / ``completion_tokens``: as the provider reported them (thinking included);
    - ``characters``: text handed to the provider (TTS: the normalized sentence);
    - ``outcome``: ``"ok"``, ``"failed"``, ``"timeout"`` (stalled past the role's deadline or the
      provider's own) or ``"cancelled"`` (barge-in, call end, drain).
    """

    turn_id: str
    stage: str
    provider: str
    model: str = ""
    audio_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    characters: int = 0
    outcome: str = "ok"
