"""Provider interfaces, the one error tree, and the lazy registry. No vendor code lives here."""

from voiceplatform.providers.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.interfaces import (
    AsrProvider,
    LlmChunk,
    LlmOptions,
    LlmProvider,
    Transcript,
    TtsProvider,
    VadModel,
)
from voiceplatform.providers.registry import ProviderRegistry

__all__ = [
    "AsrProvider",
    "LlmChunk",
    "LlmOptions",
    "LlmProvider",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderRegistry",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "Transcript",
    "TtsProvider",
    "VadModel",
    "error_from_status",
]
