"""Zip-based documents (DOCX now; XLSX, PPTX, ODT later) opened without trusting them.

A zip states each member's sizes in its central directory, and those numbers are
chosen by whoever made the file: a 444 KB DOCX can hold a 400 MiB zero-filled part
(the ratio of deflate on zeros is about 1000:1), and a parser that reads every part
into memory (python-docx does) then holds all of it. So every zip-based format goes
through :func:`check_zip` before its parser sees the bytes, in two steps:

1. the declared sizes: number of members, total and markup (XML) sizes, and the
   compression ratio of each member, against :class:`ArchiveLimits`;
2. the real sizes: every member is decompressed as a stream, in small pieces that are
   counted and dropped, so a member that inflates beyond what it declared, or beyond
   the limits, is refused as soon as it crosses them, not after it has been expanded.

Only the two methods the OOXML and OpenDocument packaging standards allow, stored and
deflate, are accepted: deflate inflates in bounded steps, while bzip2 and LZMA
decompress a whole read at once (one 4 KiB read of bzip2 can become tens of MB).

After the check, the parser's own reads are bounded too: CPython's ``zipfile`` never
returns more than a member's declared size (and then fails its CRC), and those sizes
have just been checked.

XML inside the archive is parsed by lxml, which python-docx configures with
``resolve_entities=False`` and without ``huge_tree``: entities are not expanded, and
trees deeper than 256 levels or text nodes over 10 MB are refused by libxml2 itself.
What lxml cannot bound is the number of elements, hence the separate, smaller limit
on markup bytes: a tree takes several times its text in memory.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO

from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.types import IngestError

_MIB = 1024 * 1024
_PIECE = 64 * 1024
_MARKUP_SUFFIXES = (".xml", ".rels", ".vml")
_ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """What a compressed document may expand to (``KnowledgeSettings.archive_*``).

    ``max_ratio`` applies to members of at least ``ratio_floor_bytes`` once expanded:
    small parts (a 2 KB styles file of repeated markup) legitimately compress far better
    than 100:1, and cannot hurt anyone.
    """

    max_bytes: int
    max_markup_bytes: int
    max_ratio: float
    max_entries: int
    max_xml_tags: int
    pdf_max_stream_bytes: int
    ratio_floor_bytes: int = _MIB

    @classmethod
    def from_settings(cls, settings: KnowledgeSettings | None = None) -> ArchiveLimits:
        """The limits of ``settings`` (the defaults when None)."""
        s = settings if settings is not None else KnowledgeSettings()
        return cls(
            max_bytes=s.archive_max_bytes,
            max_markup_bytes=s.archive_max_markup_bytes,
            max_ratio=s.archive_max_ratio,
            max_entries=s.archive_max_entries,
            max_xml_tags=s.archive_max_xml_tags,
            pdf_max_stream_bytes=s.pdf_max_stream_bytes,
        )


_DEFAULT = ArchiveLimits.from_settings()
_CURRENT: ContextVar[ArchiveLimits] = ContextVar("iatros_archive_limits", default=_DEFAULT)


def current_limits() -> ArchiveLimits:
    """The limits in force for this thread or task (the settings' defaults unless set)."""
    return _CURRENT.get()


@contextlib.contextmanager
def archive_limits(limits: ArchiveLimits) -> Iterator[ArchiveLimits]:
    """Apply ``limits`` to the parsing done inside the block.

    A context variable rather than a parameter, so that every parser, a plugin's too,
    gets the configured limits through the one ``Parser.parse(data)`` signature: the
    ingestion wraps its call to ``parse`` in this block.
    """
    token = _CURRENT.set(limits)
    try:
        yield limits
    finally:
        _CURRENT.reset(token)


class ArchiveTooLarge(IngestError):
    """A zip-based file that would expand beyond the limits: refused, never expanded.

    ``code`` is what the HTTP API puts in the OpenAI error body (with status 413).
    """

    code = "archive_too_large"


def _mib(n: float) -> str:
    return f"{n / _MIB:.1f} MiB"


def check_upload(filename: str, data: bytes, limits: ArchiveLimits | None = None) -> None:
    """Refuse an uploaded zip-based file (any: DOCX, XLSX, ODT...) that expands too far.

    Run when an upload arrives, so that the client gets a 413 at once rather than a
    failed job later; it streams the members through one 64 KiB buffer (a 1 MB DOCX
    takes milliseconds). Only :class:`ArchiveTooLarge` comes out of it: a corrupt file
    is left for the parser to report.
    """
    if not data.startswith(b"PK\x03\x04"):
        return
    suffix = filename.rsplit(".", 1)[-1].upper() if "." in filename else "zip"
    try:
        check_zip(data, limits, suffix[:8])
    except ArchiveTooLarge:
        raise
    except IngestError:
        return


def check_zip(data: bytes, limits: ArchiveLimits | None = None, kind: str = "zip") -> None:
    """Refuse ``data`` unless it is a zip whose members stay within ``limits``.

    ``limits`` default to :func:`current_limits`. Every zip-based parser calls this
    before handing the bytes to its library.

    Raises :class:`ArchiveTooLarge` for anything over a limit (declared or real), and
    :class:`IngestError` for a file that is not a readable zip (corrupt, encrypted, an
    unsupported compression method). Memory use is one 64 KiB piece at a time.
    """
    limits = limits or current_limits()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise IngestError(
            f"could not read the {kind} file (corrupt?): {exc}", code="corrupt_file", kind=kind
        ) from None
    with archive:
        members = archive.infolist()
        _check_declared(members, limits, kind)
        _check_real(archive, members, limits, kind)


def _check_declared(members: list[zipfile.ZipInfo], limits: ArchiveLimits, kind: str) -> None:
    if len(members) > limits.max_entries:
        raise ArchiveTooLarge(
            f"{kind} archive has {len(members)} members, over the {limits.max_entries} limit "
            "(knowledge.archive_max_entries)"
        )
    total = markup = 0
    for info in members:
        if info.flag_bits & 0x1:
            raise IngestError(
                f"encrypted {kind} file: cannot read it without its password",
                code="encrypted_file",
                kind=kind,
            )
        if info.compress_type not in _ALLOWED_METHODS:
            raise IngestError(
                f"{kind} member {info.filename!r} uses compression method "
                f"{info.compress_type}; only stored and deflate are allowed",
                code="corrupt_file",
                kind=kind,
            )
        total += info.file_size
        if info.filename.lower().endswith(_MARKUP_SUFFIXES):
            markup += info.file_size
        _check_ratio(info.filename, info.file_size, info.compress_size, limits, kind)
    _check_totals(total, markup, limits, kind, declared=True)


def _check_real(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], limits: ArchiveLimits, kind: str
) -> None:
    total = markup = tags = 0
    for info in members:
        is_markup = info.filename.lower().endswith(_MARKUP_SUFFIXES)
        budget = min(
            info.file_size,
            limits.max_bytes - total,
            (limits.max_markup_bytes - markup) if is_markup else limits.max_bytes,
        )
        try:
            with archive.open(info) as stream:
                if is_markup:
                    size, tags = drain_markup(stream, budget, tags, limits, info.filename, kind)
                else:
                    size = drain(stream, budget, info.filename, kind)
        except ArchiveTooLarge:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as exc:
            raise IngestError(
            f"could not read the {kind} file (corrupt?): {exc}", code="corrupt_file", kind=kind
        ) from None
        except NotImplementedError as exc:
            raise IngestError(
                f"could not read the {kind} file: {exc}", code="corrupt_file", kind=kind
            ) from None
        _check_ratio(info.filename, size, info.compress_size, limits, kind)
        total += size
        markup += size if is_markup else 0
    _check_totals(total, markup, limits, kind, declared=False)


def drain(stream: IO[bytes], budget: int, name: str, kind: str = "zip") -> int:
    """Read ``stream`` to its end in 64 KiB pieces, refusing it once past ``budget`` bytes.

    The count is of what the decompressor really produced, whatever the archive said;
    the pieces are dropped at once, so memory stays at one piece however large the
    member would have become.
    """
    size = 0
    while True:
        piece = stream.read(_PIECE)
        if not piece:
            return size
        size += len(piece)
        if size > budget:
            raise ArchiveTooLarge(
                f"{kind} member {name!r} expands beyond what it declared or the limits allow "
                f"(over {_mib(budget)} read and still going): refused"
            )


def drain_markup(
    stream: IO[bytes], budget: int, tags: int, limits: ArchiveLimits, name: str, kind: str
) -> tuple[int, int]:
    """:func:`drain` for XML, also counting tags (``<``) against ``max_xml_tags``.

    A tree costs lxml about a hundred bytes per node whatever the text, and python-docx
    then walks it node by node: 30 MiB of ``<w:p/>`` (2.4 MB zipped once salted with
    comments to keep the ratio low) ran for over ten minutes. Counting ``<`` bounds the
    nodes before any tree is built; Word's own XML has one every 20-40 bytes.
    """
    size = 0
    while True:
        piece = stream.read(_PIECE)
        if not piece:
            return size, tags
        size += len(piece)
        tags += piece.count(b"<")
        if size > budget:
            raise ArchiveTooLarge(
                f"{kind} member {name!r} expands beyond what it declared or the limits allow "
                f"(over {_mib(budget)} read and still going): refused"
            )
        if tags > limits.max_xml_tags:
            raise ArchiveTooLarge(
                f"{kind} file holds over {limits.max_xml_tags:,} XML tags, over the limit "
                "(knowledge.archive_max_xml_tags): too many elements to parse safely"
            )


def _check_ratio(name: str, size: int, packed: int, limits: ArchiveLimits, kind: str) -> None:
    if size >= limits.ratio_floor_bytes and size > limits.max_ratio * max(packed, 1):
        raise ArchiveTooLarge(
            f"{kind} member {name!r} expands {size / max(packed, 1):.0f}:1 "
            f"({_mib(packed)} to {_mib(size)}), over the {limits.max_ratio:.0f}:1 limit "
            "(knowledge.archive_max_ratio): a decompression bomb?"
        )


def _check_totals(
    total: int, markup: int, limits: ArchiveLimits, kind: str, declared: bool
) -> None:
    how = "declares" if declared else "expands to"
    if total > limits.max_bytes:
        raise ArchiveTooLarge(
            f"{kind} file {how} {_mib(total)} uncompressed, over the {_mib(limits.max_bytes)} "
            "limit (knowledge.archive_max_bytes)"
        )
    if markup > limits.max_markup_bytes:
        raise ArchiveTooLarge(
            f"{kind} file {how} {_mib(markup)} of XML, over the "
            f"{_mib(limits.max_markup_bytes)} limit (knowledge.archive_max_markup_bytes)"
        )


# --- PDF ---------------------------------------------------------------------------


@contextlib.contextmanager
def pdf_limits(data_size: int, limits: ArchiveLimits | None = None) -> Iterator[ExpansionBudget]:
    """pypdf's decompression caps set from ``limits``, and a budget for the whole file.

    pypdf caps each stream at 75 MB by default and caches what it decoded, so a 287 KB
    PDF of four 70 MB blank content streams took 25 s and 350 MB to read. Inside this
    block every stream is capped at ``pdf_max_stream_bytes`` (pypdf raises
    ``LimitReachedError``), and the returned budget adds up what the pages expand to.
    """
    from pypdf import apply_configuration

    limits = limits or current_limits()
    cap = limits.pdf_max_stream_bytes
    budget = ExpansionBudget(
        "PDF",
        int(min(limits.max_bytes, max(limits.ratio_floor_bytes, limits.max_ratio * data_size))),
    )
    with apply_configuration(
        zlib_maximum_output_length=cap,
        lzw_maximum_output_length=cap,
        run_length_maximum_output_length=cap,
        brotli_maximum_output_length=cap,
        jbig2_maximum_output_length=cap,
        array_based_stream_maximum_output_length=cap,
        image_maximum_buffer_size=cap,
    ):
        yield budget


class ExpansionBudget:
    """Bytes a document may still expand to; :meth:`spend` refuses it once over."""

    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self.spent = 0

    def spend(self, size: int, where: str) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise ArchiveTooLarge(
                f"{self.kind} expands past {_mib(self.limit)} by {where} "
                "(knowledge.archive_max_bytes, archive_max_ratio): a decompression bomb?"
            )


def pdf_limit_reached(exc: Exception, where: str) -> ArchiveTooLarge:
    """pypdf's ``LimitReachedError`` as the refusal the API reports (413)."""
    return ArchiveTooLarge(
        f"PDF refused at {where}: {exc} (knowledge.pdf_max_stream_bytes is "
        f"{_mib(current_limits().pdf_max_stream_bytes)}): a decompression bomb?"
    )


def check_uploads(files: list[tuple[str, bytes]], limits: ArchiveLimits | None = None) -> None:
    """:func:`check_upload` for each uploaded ``(filename, data)``; the refusal names the file."""
    for filename, data in files:
        try:
            check_upload(filename, data, limits)
        except ArchiveTooLarge as exc:
            raise ArchiveTooLarge(f"{filename}: {exc}") from None
