"""Audio the FreeSWITCH peer plays and records: files as FreeSWITCH opens them, the call timeline.

Playable paths (what ``playback`` accepts in the peer): raw L16 ``.r8/.r16/.r24/.r32/.r48/.r64``
(mod_native_file's naming: the extension gives the rate), ``.wav`` (16-bit, the first channel of
multi-channel files), ``.mp3``/``.ogg`` (decoded with PyAV), and ``silence_stream://<ms>``. A file
at another rate than the call's is resampled (linear, ``voiceplatform.audio.resample_pcm``).
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from voiceplatform.audio import array_to_pcm, read_wav, resample_pcm

RAW_RATES = {".r8": 8000, ".r16": 16000, ".r24": 24000, ".r32": 32000, ".r48": 48000, ".r64": 64000}
STREAM_AUDIO_EXT = {"raw": "", "wav": ".wav", "mp3": ".mp3", "ogg": ".ogg"}  # what mod_audio_stream writes


def load_audio(path: str, rate: int) -> bytes | None:
    """The file's audio as L16 mono at ``rate``, or None when FreeSWITCH could not open it."""
    if path.startswith("silence_stream://"):
        ms = path[len("silence_stream://") :].split(",", 1)[0]
        return bytes(max(0, int(ms) if ms.lstrip("-").isdigit() else 0) * rate // 1000 * 2)
    file = Path(path)
    if not file.is_file():
        return None
    suffix = file.suffix.lower()
    try:
        if suffix in RAW_RATES:
            data = file.read_bytes()
            pcm, src_rate = data[: len(data) // 2 * 2], RAW_RATES[suffix]
        elif suffix == ".wav":
            samples, src_rate = read_wav(file)
            pcm = array_to_pcm(samples)
        elif suffix in (".mp3", ".ogg"):
            pcm, src_rate = _decode_compressed(file)
        else:
            return None
    except (OSError, ValueError, EOFError, wave.Error):
        return None
    return resample_pcm(pcm, src_rate, rate)


def _decode_compressed(file: Path) -> tuple[bytes, int]:
    import av  # heavy; only when a robot sends mp3/ogg

    chunks: list[bytes] = []
    rate = 0
    try:
        with av.open(str(file)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate or 8000
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(bytes(out.planes[0])[: out.samples * 2])
    except av.error.FFmpegError as exc:
        raise ValueError(str(exc)) from exc
    return b"".join(chunks), rate


def mix(a: bytes, b: bytes) -> bytes:
    """Sum two L16 signals (the shorter one zero-padded), clipped to 16 bits."""
    n = max(len(a), len(b)) // 2
    x = np.zeros(n, dtype=np.int32)
    x[: len(a) // 2] += np.frombuffer(a, dtype="<i2")
    x[: len(b) // 2] += np.frombuffer(b, dtype="<i2")
    return array_to_pcm(np.clip(x, -32768, 32767).astype(np.int16))


def interleave(left: bytes, right: bytes) -> bytes:
    n = max(len(left), len(right)) // 2
    out = np.zeros((n, 2), dtype=np.int16)
    out[: len(left) // 2, 0] = np.frombuffer(left, dtype="<i2")
    out[: len(right) // 2, 1] = np.frombuffer(right, dtype="<i2")
    return array_to_pcm(out.reshape(-1))


def wav_file(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buf.getvalue()


class Track:
    """One side of the call on its timeline (sample 0 = answer), at the call rate."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, start: int, pcm: bytes) -> None:
        begin = start * 2
        end = begin + len(pcm)
        if len(self._data) < end:
            self._data.extend(bytes(end - len(self._data)))
        self._data[begin:end] = pcm

    def read(self, start: int, end: int) -> bytes:
        chunk = bytes(self._data[start * 2 : end * 2])
        return chunk + bytes(max(0, (end - start) * 2 - len(chunk)))
