"""Document parsers by file extension, registered through the ``iatros.parsers`` entry points.

Iatros's own parsers (PDF, DOCX, Markdown, HTML, text: :mod:`iatros.knowledge.builtin_parsers`)
register exactly as a third-party package would::

    [project.entry-points."iatros.parsers"]
    rtf = "my_package.rtf:RtfParser"

An entry point names a :class:`Parser` (an instance, or a class built without
arguments). A parser that fails to import or is not a parser is logged and skipped
(:mod:`iatros.plugins`); the other formats keep working. When two parsers claim one
extension, a plugin's wins over a built-in (so a better PDF parser can replace pypdf),
and among plugins the first by entry-point name.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol, runtime_checkable

from iatros.knowledge.document import ParsedDocument
from iatros.knowledge.types import IngestError
from iatros.plugins import PARSERS, load_group

log = logging.getLogger("iatros.knowledge.parsers")

BUILTIN_DISTRIBUTION = "iatros"


@runtime_checkable
class Parser(Protocol):
    """Turns one format's bytes into a :class:`ParsedDocument`.

    Attributes:
        content_type: the format's short name, reported per file (``pdf``).
        extensions: lower-case suffixes with the dot (``(".pdf",)``).
    """

    content_type: str
    extensions: tuple[str, ...]

    def check(self, head: bytes) -> None:
        """Raise :class:`IngestError` when the first bytes show another format (misnamed)."""

    def parse(self, data: bytes) -> ParsedDocument:
        """Parse the whole file; raise :class:`IngestError` with a user-readable message."""
        ...


@dataclass(frozen=True, slots=True)
class _Entry:
    parser: Parser
    builtin: bool


def _build(obj: object) -> Parser:
    parser = obj() if isinstance(obj, type) else obj
    if not isinstance(parser, Parser):
        raise TypeError("not a parser: needs content_type, extensions, check() and parse()")
    bad = [e for e in parser.extensions if not (e.startswith(".") and e == e.lower())]
    if not parser.extensions or bad:
        raise TypeError(f"extensions must be lower-case suffixes starting with '.': {bad}")
    return parser


class ParserRegistry:
    """Extension -> parser, from the entry points (loaded once, on first use)."""

    def __init__(self) -> None:
        self._by_extension: dict[str, _Entry] | None = None
        self._lock = threading.Lock()

    def _table(self) -> dict[str, _Entry]:
        table = self._by_extension
        if table is not None:
            return table
        with self._lock:
            if self._by_extension is None:
                self._by_extension = self._load()
            return self._by_extension

    def _load(self) -> dict[str, _Entry]:
        from importlib.metadata import entry_points

        dists = {
            ep.name: getattr(getattr(ep, "dist", None), "name", None)
            for ep in entry_points(group=PARSERS)
        }
        table: dict[str, _Entry] = {}
        for name, parser in load_group(PARSERS, _build).items():
            builtin = dists.get(name) == BUILTIN_DISTRIBUTION
            for ext in parser.extensions:
                held = table.get(ext)
                if held is not None and (builtin or not held.builtin):
                    continue  # a built-in never displaces; the first plugin stays
                if held is not None:
                    log.info(
                        "parser plugin replaces a built-in",
                        extra={"extension": ext, "plugin": name},
                    )
                table[ext] = _Entry(parser, builtin)
        return table

    def extensions(self) -> dict[str, str]:
        """Supported extension -> content type."""
        return {ext: e.parser.content_type for ext, e in sorted(self._table().items())}

    def parser_for(self, filename: str, head: bytes) -> Parser:
        """The parser for ``filename``, checked against the file's first bytes."""
        suffix = PurePath(filename).suffix.lower()
        entry = self._table().get(suffix)
        if entry is None:
            supported = ", ".join(sorted(self._table()))
            shown = suffix or "(no extension)"
            raise IngestError(
                f"unsupported file type {shown!r} (supported: {supported})",
                code="unsupported_type",
                type=shown,
                supported=supported,
            )
        entry.parser.check(head)
        return entry.parser

    def reload(self) -> None:
        """Read the entry points again (after installing a plugin; tests)."""
        with self._lock:
            self._by_extension = None


registry = ParserRegistry()
"""The process-wide registry every ingestion uses."""


def parse_document(
    filename: str, data: bytes, parsers: ParserRegistry | None = None
) -> ParsedDocument:
    """Parse ``data`` by its extension; raises :class:`IngestError` with a readable message."""
    if not data:
        raise IngestError("empty file", code="empty_file")
    parser = (parsers or registry).parser_for(filename, data[:1024])
    doc = parser.parse(data)
    doc.blocks = [b for b in doc.blocks if b.text.strip()]
    if not doc.blocks:
        raise IngestError("no text found in the file", code="no_text")
    return doc


def supported_extensions() -> dict[str, str]:
    """Extension -> content type of every parser loaded (built-ins and plugins)."""
    return registry.extensions()
