"""voice-platform common library: wire types, subjects, bus, runtime, config, logging."""

__version__ = "0.1.0"
