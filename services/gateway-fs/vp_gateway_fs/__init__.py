"""gateway-fs: FreeSWITCH gateway (mod_audio_stream WebSocket + Event Socket)."""
