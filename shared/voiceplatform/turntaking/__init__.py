"""Turn-taking knowledge shared by the stages: text cues of an unfinished utterance or a backchannel."""

from voiceplatform.turntaking.cues import ends_incomplete, is_backchannel, words

__all__ = ["ends_incomplete", "is_backchannel", "words"]
