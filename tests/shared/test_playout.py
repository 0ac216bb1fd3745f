import numpy as np

from voiceplatform.gateway import FrameAssembler, Playout

FRAME = 640  # 20 ms at 16 kHz


def drain(p: Playout) -> list[tuple[str, bytes]]:
    out = []
    while (item := p.next_frame()) is not None:
        out.append(item)
    return out


def test_sentences_play_in_order_even_when_they_arrive_out_of_order():
    p = Playout(FRAME)
    p.add_audio("t1", 1, b"\x02" * FRAME, last=True, text="Второе.")
    assert p.next_frame() is None  # sentence 0 not here yet: wait, do not skip
    p.add_audio("t1", 0, b"\x01" * FRAME * 2, last=True, text="Первое.")
    p.set_expected("t1", 2)
    frames = drain(p)
    assert [f[1][0] for f in frames] == [1, 1, 2]
    assert [t.turn_id for t in p.pop_finished()] == ["t1"]
    assert p.idle


def test_partial_tail_is_padded_and_underrun_waits():
    p = Playout(FRAME)
    p.add_audio("t", 0, b"\x01" * (FRAME + 10), last=False)
    assert len(drain(p)) == 1  # 10 bytes wait for more
    p.add_audio("t", 0, b"", last=True)
    tail = drain(p)
    assert len(tail) == 1 and len(tail[0][1]) == FRAME and tail[0][1][10:] == b"\x00" * (FRAME - 10)


def test_flush_reports_what_was_heard():
    p = Playout(FRAME)
    p.add_audio("t", 0, b"\x01" * FRAME * 2, last=True, text="Добрый день.")
    p.add_audio("t", 1, b"\x01" * FRAME * 4, last=True, text="У нас есть корм для собак.")
    p.set_expected("t", 2)
    for _ in range(4):  # sentence 0 and half of sentence 1
        p.next_frame()
    turn = p.drop("t")
    assert turn is not None
    assert turn.played_text().startswith("Добрый день. У нас есть")
    assert turn.played_text().endswith("…")
    assert p.next_frame() is None and p.idle


def test_frame_assembler_reframes_and_resamples():
    asm = FrameAssembler(48000, 16000)
    tone = (np.sin(np.arange(48000) / 10) * 8000).astype("<i2").tobytes()
    out = []
    for i in range(0, len(tone), 777):  # odd chunking, odd byte counts
        out += asm.push(tone[i : i + 777])
    assert all(len(f) == FRAME for f in out)
    assert 48 <= len(out) <= 50  # one second at 16 kHz = 50 frames


def test_resample_survives_inputs_shorter_than_its_filter():
    from voiceplatform.audio import resample

    one = np.array([1000], dtype=np.int16)
    assert resample(one, 48000, 16000).size == 0  # round(1 * 16000 / 48000) == 0 samples out
    assert resample(np.array([1000, -1000], dtype=np.int16), 48000, 16000).size == 1


def test_frame_assembler_handles_one_sample_chunks():
    asm = FrameAssembler(48000, 16000)
    out = []
    for _ in range(960 * 3):  # 60 ms fed one 16-bit sample at a time
        out += asm.push(b"\x10\x00")
    assert len(out) in (2, 3) and all(len(f) == FRAME for f in out)
