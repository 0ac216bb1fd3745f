"""Any common audio file (WAV of any sample width or float, MP3, OGG, FLAC, any rate and channel
count) as 16-bit mono PCM at the rate asked for, or one clear line saying why not.

PyAV decodes (it probes the content, so an MP3 renamed ``.wav`` still plays); soxr resamples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from voiceplatform.audio import Int16Array

# the first bytes of each container, to name what a file that does not decode seems to be
_MAGIC = (
    (b"RIFF", "WAV"),
    (b"ID3", "MP3"),
    (b"\xff\xfb", "MP3"),
    (b"\xff\xf3", "MP3"),
    (b"\xff\xf2", "MP3"),
    (b"OggS", "OGG"),
    (b"fLaC", "FLAC"),
)


class AudioFileError(ValueError):
    """One line for the user: ``<file>: <why>``."""


def looks_like(head: bytes) -> str:
    """The container the first bytes name ("WAV", "MP3", …), or ""."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), "")


def _what_it_is(path: Path) -> str:
    with path.open("rb") as file:
        head = file.read(16)
    kind = looks_like(head)
    claimed = path.suffix.lstrip(".").upper()
    if kind and claimed and kind != claimed and not (kind == "OGG" and claimed in ("OGA", "OPUS")):
        return f"not a {claimed} file (looks like {kind})"
    if kind:
        return f"a {kind} file that does not decode"
    return "not an audio file this tool knows (WAV, MP3, OGG, FLAC)"


def load_audio(path: Path | str, rate: int) -> Int16Array:
    """The file's first audio stream as 16-bit mono at ``rate``; ``AudioFileError`` otherwise."""
    import av
    import soxr

    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    chunks: list[npt.NDArray[np.float32]] = []
    source_rate = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: no audio stream in it")
            stream = container.streams.audio[0]
            source_rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=source_rate)
            for frame in container.decode(stream):
                for out in to_mono.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
            for out in to_mono.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
    except AudioFileError:
        raise
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise AudioFileError(
            f"{path}: {_what_it_is(path)}: cannot decode ({exc.__class__.__name__})"
        ) from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size == 0 or not source_rate:
        raise AudioFileError(f"{path}: no audio in it")
    if source_rate != rate:
        samples = soxr.resample(samples, source_rate, rate, quality="HQ").astype(np.float32)
    result: Int16Array = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    return result
