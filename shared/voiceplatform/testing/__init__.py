"""Test doubles the product itself uses (``vp call --phone``, bench/): a FreeSWITCH peer.

Nothing here imports from ``tests/``; the stand-ins there are for cloud vendors only.
"""

from voiceplatform.testing.freeswitch import FreeSwitchPeer
from voiceplatform.testing.freeswitch_call import PeerCall
from voiceplatform.testing.freeswitch_esl import EslCommand
from voiceplatform.testing.freeswitch_player import Playback
from voiceplatform.testing.freeswitch_wire import FsEvent

__all__ = ["EslCommand", "FreeSwitchPeer", "FsEvent", "PeerCall", "Playback"]
