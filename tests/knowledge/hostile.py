"""Hostile files made in the tests: zip bombs (honest or lying sizes), PDF bombs, deep XML.

Nothing here is ever expanded by the tests themselves: a 400 MiB zero-filled member is
written as one 1 MiB deflate segment repeated (each segment ends with a full flush, so
it decodes alone), which takes milliseconds and a few hundred KB.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Member:
    name: str
    packed: bytes
    size: int
    crc: int
    method: int = zipfile.ZIP_DEFLATED
    declared_size: int | None = None  # a lie in the headers when set


def deflated(data: bytes, name: str) -> Member:
    """An ordinary member (raw deflate, as zip stores it)."""
    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    return Member(name, co.compress(data) + co.flush(), len(data), zlib.crc32(data))


def zeros(name: str, mib: int, declared_size: int | None = None) -> Member:
    """``mib`` MiB of zero bytes in about 1 KB per MiB."""
    chunk = bytes(_MIB)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    packed = segment * mib + b"\x03\x00"  # an empty final block ends the stream
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return Member(name, packed, mib * _MIB, crc, declared_size=declared_size)


def zip_bytes(members: list[Member]) -> bytes:
    """A zip written field by field, so that its declared sizes can lie."""
    out = io.BytesIO()
    central = io.BytesIO()
    for m in members:
        name = m.name.encode()
        size = m.size if m.declared_size is None else m.declared_size
        offset = out.tell()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                20,
                0,
                m.method,
                0,
                0x21,
                m.crc,
                len(m.packed),
                size,
                len(name),
                0,
            )
        )
        out.write(name)
        out.write(m.packed)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                m.method,
                0,
                0x21,
                m.crc,
                len(m.packed),
                size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
        )
        central.write(name)
    start = out.tell()
    directory = central.getvalue()
    out.write(directory)
    out.write(
        struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), start, 0
        )
    )
    return out.getvalue()


def docx_members(text: str = "An ordinary protocol.") -> list[Member]:
    """The members of a real DOCX made by python-docx."""
    import docx

    document = docx.Document()
    document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return [deflated(archive.read(i), i.filename) for i in archive.infolist()]


def docx_with_part(part: Member) -> bytes:
    """A real DOCX with ``part`` added as an image that the document's relationships
    name, so that python-docx loads it (as it loaded the 400 MiB part in the report)."""
    members = []
    for m in docx_members():
        if m.name == "word/_rels/document.xml.rels":
            rels = zlib.decompress(m.packed, -15).replace(
                b"</Relationships>",
                b'<Relationship Id="rIdBomb" Type="http://schemas.openxmlformats.org/'
                b'officeDocument/2006/relationships/image" Target="media/'
                + part.name.rsplit("/", 1)[-1].encode()
                + b'"/></Relationships>',
            )
            m = deflated(rels, m.name)
        elif m.name == "[Content_Types].xml":
            types = zlib.decompress(m.packed, -15)
            if b'Extension="png"' not in types:
                types = types.replace(
                    b"<Default ", b'<Default Extension="png" ContentType="image/png"/><Default ', 1
                )
            m = deflated(types, m.name)
        members.append(m)
    return zip_bytes([*members, part])


def docx_with_document_xml(xml: bytes) -> bytes:
    """A real DOCX whose ``word/document.xml`` is replaced by ``xml``."""
    members = [
        deflated(xml, m.name) if m.name == "word/document.xml" else m for m in docx_members()
    ]
    return zip_bytes(members)


def pdf_bomb(pages: int, mib_per_page: int) -> bytes:
    """A valid PDF whose every page has one line of text and ``mib_per_page`` MiB of blanks
    in its FlateDecode content stream (each page's stream is about 1 KB per MiB)."""
    co = zlib.compressobj(9)
    packed = co.compress(b"BT /F1 12 Tf 72 712 Td (Hello bomb) Tj ET\n")
    blank = b" " * _MIB
    for _ in range(mib_per_page):
        packed += co.compress(blank)
    packed += co.flush()
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    font = 3 + 2 * pages
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
    ]
    for i in range(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(
            f"<< /Length {len(packed)} /Filter /FlateDecode >>\nstream\n".encode()
            + packed
            + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()
