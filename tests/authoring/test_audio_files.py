"""`vp call --wav` takes any common audio file: WAV of any sample format and rate, MP3, OGG, FLAC;
anything else gets one line saying what it is."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from voiceplatform.audio_files import AudioFileError, load_audio

SECONDS = 1.0
HZ = 440.0


def encode(path: Path, container: str, codec: str, rate: int, channels: int = 2) -> Path:
    """One second of a 440 Hz tone, encoded by PyAV as ``codec`` in ``container``."""
    t = np.arange(int(SECONDS * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * HZ * t)).astype(np.float32)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        ctx = stream.codec_context
        frame = av.AudioFrame.from_ndarray(np.stack([tone] * channels), format="fltp", layout=layout)
        frame.rate = rate
        to_codec = av.AudioResampler(
            format=ctx.codec.audio_formats[0].name,
            layout=layout,
            rate=rate,
            frame_size=ctx.frame_size or None,
        )
        for piece in [*to_codec.resample(frame), *to_codec.resample(None)]:
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


FORMATS = {
    "wav-u8": ("wav", "wav", "pcm_u8", 8000),
    "wav-s16": ("wav", "wav", "pcm_s16le", 44100),
    "wav-s24": ("wav", "wav", "pcm_s24le", 48000),
    "wav-s32": ("wav", "wav", "pcm_s32le", 22050),
    "wav-f32": ("wav", "wav", "pcm_f32le", 16000),
    "wav-f64": ("wav", "wav", "pcm_f64le", 32000),
    "mp3": ("mp3", "mp3", "libmp3lame", 44100),
    "ogg-opus": ("ogg", "ogg", "libopus", 48000),
    "flac": ("flac", "flac", "flac", 24000),
}


@pytest.mark.parametrize("kind", FORMATS)
def test_every_common_format_becomes_the_same_tone_at_16k(tmp_path: Path, kind: str) -> None:
    suffix, container, codec, rate = FORMATS[kind]
    path = encode(tmp_path / f"caller.{suffix}", container, codec, rate)
    samples = load_audio(path, 16000)
    assert samples.dtype == np.int16
    assert abs(samples.size - 16000) <= 16000 * 0.1  # encoders pad a frame or two
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / samples.size - HZ) < 5  # the tone, not noise
    assert np.max(np.abs(samples)) > 0.2 * 32767  # the level survived the sample-format change


def test_an_mp3_named_wav_still_plays(tmp_path: Path) -> None:
    mp3 = encode(tmp_path / "caller.mp3", "mp3", "libmp3lame", 44100)
    renamed = tmp_path / "caller.wav"
    renamed.write_bytes(mp3.read_bytes())
    assert abs(load_audio(renamed, 8000).size - 8000) <= 800


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("junk.wav", bytes(range(256)) * 8, "not an audio file this tool knows (WAV, MP3, OGG, FLAC)"),
        ("notes.txt", "привет".encode() * 50, "not an audio file this tool knows (WAV, MP3, OGG, FLAC)"),
        ("cut.wav", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(20), "not a WAV file (looks like MP3)"),
    ],
)
def test_what_cannot_be_decoded_gets_one_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioFileError) as err:
        load_audio(path, 16000)
    text = str(err.value)
    assert text.startswith(f"{path}: {message}") and "\n" not in text


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match=r"nothing\.wav: no such file$"):
        load_audio(tmp_path / "nothing.wav", 16000)
