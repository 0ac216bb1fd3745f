"""The call side of both gateways (web and FreeSWITCH): one call session, transport-agnostic.

A gateway adapts its transport to ``AudioSink`` and feeds caller PCM to ``CallSession``; the session
does the rest: assignment of streaming stages, greeting, playout pacing, barge-in, stale-audio
filtering by turn id, per-turn metrics, and the call's lifecycle events.
"""

from voiceplatform.gateway.framing import FrameAssembler
from voiceplatform.gateway.owners import GatewayDirectory
from voiceplatform.gateway.playout import Playout
from voiceplatform.gateway.session import AudioSink, CallSession

__all__ = ["AudioSink", "CallSession", "FrameAssembler", "GatewayDirectory", "Playout"]
