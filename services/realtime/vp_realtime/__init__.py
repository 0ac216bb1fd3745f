"""realtime: full-duplex speech-to-speech sessions (mode=realtime), one per call, by assignment."""
