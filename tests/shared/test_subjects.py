import pytest

from voiceplatform import subjects
from voiceplatform.bus.memory import subject_matches


def test_per_call_subjects_share_one_shape():
    assert subjects.audio_in("web-1") == "vp.call.web-1.audio.in"
    assert subjects.tts_audio("web-1") == "vp.call.web-1.tts.audio"
    assert subjects.call_id_of(subjects.llm_sentence("web-1")) == "web-1"


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", "", "x" * 200])
def test_ids_that_would_break_tokenization_are_rejected(bad):
    with pytest.raises(subjects.SubjectError):
        subjects.audio_in(bad)


def test_wildcards_match_the_builders():
    assert subject_matches(subjects.ANY_ASR, subjects.asr("c1"))
    assert not subject_matches(subjects.ANY_ASR, subjects.audio_in("c1"))
    assert subject_matches(subjects.ALL_CALLS, subjects.llm_done("c1"))
    assert subject_matches(subjects.ANY_PRESENCE, subjects.presence("tts"))
    assert subjects.call_event("call.started") == "call_events.call.started"
