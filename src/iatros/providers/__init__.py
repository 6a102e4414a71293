"""Model adapters behind one small async interface (chat, stream, embed)."""

from iatros.providers.base import (
    ChatCall,
    ChatResult,
    EmbedResult,
    Provider,
    StreamDelta,
    Usage,
)
from iatros.providers.registry import build_provider, provider_types, register_provider

__all__ = [
    "ChatCall",
    "ChatResult",
    "EmbedResult",
    "Provider",
    "StreamDelta",
    "Usage",
    "build_provider",
    "provider_types",
    "register_provider",
]
