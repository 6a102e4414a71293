"""Structure-aware chunking: never across a heading or a page, paragraphs kept whole.

A chunk collects whole paragraphs up to ``chunk_tokens``; a paragraph too long for one
chunk is cut at sentence ends (and a sentence too long at word boundaries). When a
chunk is cut for size, the next one starts with the last ``overlap`` tokens' worth of
sentences, so a fact on a boundary is retrievable from both sides. Each chunk keeps its
heading path (``section``) and its page, which is what citations show (chunks stop at
page ends so that a citation's page is always right). Chunks repeated verbatim inside
one document are dropped (dedup by content hash).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from iatros.knowledge.document import Block, ParsedDocument
from iatros.knowledge.text import count_tokens, join_nonempty, sentences


@dataclass(slots=True)
class Chunk:
    text: str
    page: int | None
    page_end: int | None
    section: str | None
    ord: int = 0

    @property
    def indexed_text(self) -> str:
        """What the indexes see: the heading path gives a short chunk its context."""
        return f"{self.section}\n{self.text}" if self.section else self.text


@dataclass(slots=True)
class _Unit:
    text: str
    tokens: int
    page: int | None
    starts_paragraph: bool
    overlap: bool = False


def _split_long(text: str, limit: int) -> list[str]:
    """Sentences of ``text``, with sentences over ``limit`` tokens cut at word boundaries."""
    out: list[str] = []
    for sentence in sentences(text) or [text]:
        if count_tokens(sentence) <= limit:
            out.append(sentence)
            continue
        words = sentence.split()
        piece: list[str] = []
        size = 0
        for word in words:
            n = count_tokens(word)
            if piece and size + n > limit:
                out.append(" ".join(piece))
                piece, size = [], 0
            piece.append(word)
            size += n
        if piece:
            out.append(" ".join(piece))
    return out


class Chunker:
    def __init__(self, chunk_tokens: int = 500, overlap: int = 50) -> None:
        if overlap >= chunk_tokens:
            raise ValueError("overlap must be smaller than chunk_tokens")
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap

    def chunk(self, doc: ParsedDocument) -> list[Chunk]:
        chunks: list[Chunk] = []
        headings: list[tuple[int, str]] = []
        units: list[_Unit] = []
        size = 0

        def section() -> str | None:
            return join_nonempty(h for _, h in headings) or None

        def flush(for_size: bool) -> None:
            nonlocal units, size
            if not any(not u.overlap for u in units):
                units, size = [], 0
                return
            parts: list[str] = []
            for u in units:
                if parts and u.starts_paragraph:
                    parts.append("\n\n")
                elif parts:
                    parts.append(" ")
                parts.append(u.text)
            own = [u for u in units if not u.overlap]
            pages = [u.page for u in own if u.page is not None]
            chunks.append(
                Chunk(
                    "".join(parts),
                    own[0].page if own[0].page is not None else (pages[0] if pages else None),
                    pages[-1] if pages else None,
                    section(),
                )
            )
            carried: list[_Unit] = []
            if for_size and self.overlap:
                budget = self.overlap
                for u in reversed(units):
                    for s in reversed(sentences(u.text) or [u.text]):
                        n = count_tokens(s)
                        if n > budget:
                            break
                        carried.insert(0, _Unit(s, n, u.page, False, overlap=True))
                        budget -= n
                    else:
                        continue
                    break
            units = carried
            size = sum(u.tokens for u in carried)

        def add(unit: _Unit) -> None:
            nonlocal size
            if size + unit.tokens > self.chunk_tokens and any(not u.overlap for u in units):
                flush(for_size=True)
                while units and size + unit.tokens > self.chunk_tokens:
                    dropped = units.pop(0)
                    size -= dropped.tokens
            units.append(unit)
            size += unit.tokens

        block: Block
        for block in doc.blocks:
            if block.kind == "heading":
                flush(for_size=False)
                while headings and headings[-1][0] >= block.level:
                    headings.pop()
                headings.append((block.level, block.text))
                continue
            if units and block.page is not None and units[-1].page != block.page:
                flush(for_size=False)  # a chunk never spans pages: citations name one page
            tokens = count_tokens(block.text)
            if tokens <= self.chunk_tokens:
                add(_Unit(block.text, tokens, block.page, True))
                continue
            for i, piece in enumerate(_split_long(block.text, self.chunk_tokens)):
                add(_Unit(piece, count_tokens(piece), block.page, i == 0))
        flush(for_size=False)

        seen: set[bytes] = set()
        unique: list[Chunk] = []
        for chunk in chunks:
            digest = hashlib.blake2b(" ".join(chunk.text.split()).lower().encode(), digest_size=16)
            if digest.digest() in seen:
                continue
            seen.add(digest.digest())
            chunk.ord = len(unique)
            unique.append(chunk)
        return unique
