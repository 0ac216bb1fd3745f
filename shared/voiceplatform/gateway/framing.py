"""Re-frame caller audio of any chunking and rate into 20 ms frames at the call's rate."""

from __future__ import annotations

from voiceplatform.resampling import StreamResampler
from voiceplatform.wire import frame_bytes

MIN_INPUT_RATE = 8000
MAX_INPUT_RATE = 48000


class FrameAssembler:
    def __init__(self, input_rate: int, call_rate: int) -> None:
        if not MIN_INPUT_RATE <= input_rate <= MAX_INPUT_RATE:
            raise ValueError(f"unsupported input sample rate {input_rate} (8000..48000)")
        self.input_rate = input_rate
        self.call_rate = call_rate
        self._frame = frame_bytes(call_rate)
        self._pending = bytearray()
        self._odd = b""
        # one resampler over the whole stream: per-chunk resampling would click at chunk edges
        self._resampler = StreamResampler(input_rate, call_rate)

    def push(self, data: bytes) -> list[bytes]:
        """Add caller bytes (16-bit LE mono at ``input_rate``); return the complete frames."""
        if len(data) == self._frame and not self._pending and not self._odd and self._resampler.passthrough:
            return [data]  # a whole frame at the call's rate, as FreeSWITCH sends them: no copies
        data = self._odd + data
        if len(data) % 2:
            self._odd, data = data[-1:], data[:-1]
        else:
            self._odd = b""
        self._pending += self._resampler.feed(bytes(data))
        out = []
        while len(self._pending) >= self._frame:
            out.append(bytes(self._pending[: self._frame]))
            del self._pending[: self._frame]
        return out
