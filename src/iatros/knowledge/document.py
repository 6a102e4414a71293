"""What a parser returns: a document as headings and paragraphs with page numbers.

Kept apart from the parsers so the parser registry, third-party parsers and the chunker
can use these types without importing any parsing library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(slots=True)
class Block:
    text: str
    kind: Literal["heading", "paragraph"] = "paragraph"
    level: int = 0
    page: int | None = None


@dataclass(slots=True)
class ParsedDocument:
    content_type: str
    """The format's name (``pdf``, ``markdown``, ...; a plugin's own name for its format)."""
    blocks: list[Block]
    pages: int | None = None
    title: str | None = None
    warnings: list[str] = field(default_factory=list)
