"""Image parts of multimodal chat messages: checked once, keyed by digest, never logged.

OpenAI's ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}`` parts reach
the gateway from every caller (HTTP, the radiograph analyst). They are checked here before
anything else happens, so a bad image is a precise 400 naming ``messages.i.content.j``
rather than an upstream's vague error: data URLs only by default (an allowed image type,
valid base64, within the size limit, bytes that are what the type says); remote
``http(s)`` URLs only when ``images.allow_remote_urls`` is on, because an upstream that
fetches them can be pointed at internal addresses (SSRF). The gateway itself never
fetches a URL. ``iatros://<source>/<path>`` references an image stored by this server
(``iatros://radiographs/images/<id>``): accepted only for a source the chat service knows,
which reads it for the asking tenant (``gateway/image_refs.py``).

A leaf module (errors and pydantic only): the settings, the router, the cache keys and
the gateway all use it without importing each other.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Collection, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from iatros.errors import InvalidRequest

ImageType = Literal["image/png", "image/jpeg", "image/webp"]
IMAGE_TYPES: tuple[ImageType, ...] = ("image/png", "image/jpeg", "image/webp")
DETAILS = ("auto", "low", "high")
LOW_DETAIL_TOKENS = 85
HIGH_DETAIL_TOKENS = 765
"""What OpenAI bills for one image (low detail, and a typical 1024-pixel image at high
detail); used only to estimate the prompt's size before it is sent."""
_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
}


class ImageInputSettings(BaseModel):
    """Limits on images in chat requests (``images:``)."""

    model_config = ConfigDict(extra="forbid")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Largest decoded image. Over HTTP, ``server.max_body_bytes`` also caps the request
    (base64 adds a third)."""
    max_images: int = Field(8, ge=1, le=100)
    """Images per request."""
    mime_types: list[ImageType] = Field(default_factory=lambda: list(IMAGE_TYPES))
    allow_remote_urls: bool = False
    """Pass ``http(s)://`` image URLs on to the upstream, which fetches them. Off: an
    upstream could be made to fetch internal addresses (SSRF), and the image behind a
    URL can change, so such requests are never cached."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A checked image part: where it is and what it holds (never the bytes)."""

    where: str
    """``messages.i.content.j``"""
    kind: Literal["data", "remote", "reference"]
    mime: str | None
    size: int
    """Decoded bytes (0 for a remote URL)."""
    digest: str | None
    """SHA-256 of the decoded bytes (None for a remote URL or a reference)."""
    detail: str


_digests: ContextVar[dict[int, tuple[str, str]] | None] = ContextVar(
    "iatros_image_digests", default=None
)
"""The digests computed while checking this request's images, by the identity of their
URL string (held, so the id cannot be reused meanwhile): the cache keys the same images
at lookup and at store without decoding them again (the decoding of a large image
blocks the event loop for a noticeable time).
One request's worth: :func:`check_images` starts a new one for each request."""


def remember(url: str, digest: str) -> None:
    """Note that the data URL ``url`` (this very string) holds an image of ``digest``."""
    memo = _digests.get()
    if memo is None:
        memo = {}
        _digests.set(memo)
    memo[id(url)] = (url, digest)


def _decode(payload: str) -> bytes:
    """Strict base64 (no whitespace, correct padding); ValueError otherwise."""
    return binascii.a2b_base64(payload, strict_mode=True)


def image_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(message index, part index, part) of every ``image_url`` part."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    yield i, j, part


def has_images(messages: list[dict[str, Any]]) -> bool:
    return next(image_parts(messages), None) is not None


def _decode_data_url(url: str) -> tuple[str, str, bool]:
    """(mime type, payload, base64?) of a ``data:`` URL; ValueError if malformed."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ValueError("a data URL needs a ',' before its data")
    fields = header.split(";")
    return fields[0].strip().lower(), payload, "base64" in (f.strip().lower() for f in fields)


def _sniff(mime: str, data: bytes) -> bool:
    if mime == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return any(data.startswith(magic) for magic in _MAGIC.get(mime, ()))


REFERENCE_SCHEME = "iatros://"


def reference(url: str) -> tuple[str, str] | None:
    """(source, path) of an ``iatros://<source>/<path>`` URL, else None."""
    if not url.startswith(REFERENCE_SCHEME):
        return None
    source, _, path = url[len(REFERENCE_SCHEME) :].partition("/")
    return source, path


def check_images(
    messages: list[dict[str, Any]],
    settings: ImageInputSettings,
    sources: Collection[str] = (),
) -> list[ImageRef]:
    """Check every image part (see the module docstring); the refs, in order.

    ``sources``: the stores ``iatros://`` references may name (none: references refused).

    Raises :class:`InvalidRequest` naming the part (``messages.i.content.j...``).
    """
    refs: list[ImageRef] = []
    _digests.set(None)
    for i, j, part in image_parts(messages):
        where = f"messages.{i}.content.{j}"
        if messages[i].get("role") != "user":
            raise InvalidRequest(
                f"Invalid '{where}': images are accepted in user messages only.",
                param=where,
                code="invalid_image",
            )
        if len(refs) == settings.max_images:
            raise InvalidRequest(
                f"Invalid '{where}': at most {settings.max_images} images per request.",
                param=where,
                code="too_many_images",
            )
        refs.append(_check_part(part, where, settings, sources))
    return refs


def _check_part(
    part: dict[str, Any], where: str, settings: ImageInputSettings, sources: Collection[str]
) -> ImageRef:
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise InvalidRequest(
            f"Invalid '{where}.image_url': expected an object with a 'url' string "
            '({"url": "data:image/png;base64,...", "detail": "auto"}).',
            param=f"{where}.image_url",
            code="invalid_image",
        )
    unknown = sorted(set(image) - {"url", "detail"})
    if unknown:
        raise InvalidRequest(
            f"Invalid '{where}.image_url': unknown field {unknown[0]!r} (url, detail).",
            param=f"{where}.image_url.{unknown[0]}",
            code="invalid_image",
        )
    detail = image.get("detail", "auto")
    if detail not in DETAILS:
        raise InvalidRequest(
            f"Invalid '{where}.image_url.detail': must be one of {', '.join(DETAILS)}.",
            param=f"{where}.image_url.detail",
            code="invalid_image",
        )
    url: str = image["url"]
    param = f"{where}.image_url.url"
    scheme = url[:8].lower()
    if scheme.startswith(("http://", "https://")):
        if not settings.allow_remote_urls:
            raise InvalidRequest(
                f"Invalid '{param}': remote image URLs are refused (the upstream would "
                "fetch them: SSRF). Send the image as a data URL "
                "(data:image/png;base64,...), or set images.allow_remote_urls.",
                param=param,
                code="remote_image_refused",
            )
        return ImageRef(where, "remote", None, 0, None, detail)
    named = reference(url)
    if named is not None and named[0] in sources and named[1]:
        return ImageRef(where, "reference", None, 0, None, detail)
    if named is not None:
        known = ", ".join(f"iatros://{name}/..." for name in sorted(sources)) or "none"
        what = "no path" if named[0] in sources else f"no stored image source {named[0][:40]!r}"
        raise InvalidRequest(
            f"Invalid '{param}': {what} (known: {known}); or send the image as a data URL "
            "(data:image/png;base64,...).",
            param=param,
            code="invalid_image_url",
        )
    if not scheme.startswith("data:"):
        shown = url.split(":", 1)[0][:20] + ":" if ":" in url[:21] else "(none)"
        raise InvalidRequest(
            f"Invalid '{param}': unsupported URL scheme {shown}; send the image as a data "
            "URL (data:image/png;base64,...).",
            param=param,
            code="invalid_image_url",
        )
    try:
        mime, payload, is_base64 = _decode_data_url(url)
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid '{param}': {exc}.", param=param, code="invalid_image"
        ) from None
    if mime not in settings.mime_types:
        raise InvalidRequest(
            f"Invalid '{param}': image type {mime[:40] or '(none)'!r} is not accepted "
            f"(accepted: {', '.join(settings.mime_types)}).",
            param=param,
            code="unsupported_image_type",
        )
    if not is_base64:
        raise InvalidRequest(
            f"Invalid '{param}': the data URL must be base64 (data:{mime};base64,...).",
            param=param,
            code="invalid_image",
        )
    if len(payload) // 4 * 3 > settings.max_image_bytes + 2:
        raise InvalidRequest(
            f"Invalid '{param}': the image is about {len(payload) // 4 * 3} bytes; at most "
            f"{settings.max_image_bytes} are accepted (images.max_image_bytes).",
            param=param,
            code="image_too_large",
        )
    try:
        data = _decode(payload)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{param}': the data is not valid base64.", param=param, code="invalid_image"
        ) from None
    if len(data) > settings.max_image_bytes:
        raise InvalidRequest(
            f"Invalid '{param}': the image is {len(data)} bytes; at most "
            f"{settings.max_image_bytes} are accepted (images.max_image_bytes).",
            param=param,
            code="image_too_large",
        )
    if not _sniff(mime, data):
        raise InvalidRequest(
            f"Invalid '{param}': the data is not a {mime.removeprefix('image/').upper()} image.",
            param=param,
            code="invalid_image",
        )
    digest = hashlib.sha256(data).hexdigest()
    remember(url, digest)
    return ImageRef(where, "data", mime, len(data), digest, detail)


def part_digest(part: dict[str, Any]) -> str | None:
    """``sha256:<hex>`` of a data-URL image's decoded bytes; None for anything else.

    What the cache keys an image by: equal images under different base64 spellings
    share entries, and the key material never holds the image itself.
    """
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or url[:5].lower() != "data:":
        return None
    memo = _digests.get()
    known = memo.get(id(url)) if memo else None
    if known is not None and known[0] is url:
        return "sha256:" + known[1]
    try:
        _, payload, _ = _decode_data_url(url)
        data = _decode(payload)
    except ValueError:
        return None
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_tokens(part: dict[str, Any]) -> int:
    """Estimated prompt tokens of one image part (no decoding: it must not fail)."""
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else None
    return LOW_DETAIL_TOKENS if detail == "low" else HIGH_DETAIL_TOKENS


def redacted(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each image replaced by its digest and size: for logs and traces."""
    if not has_images(messages):
        return messages
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = [
            {"type": "image_url", "image_url": {"url": f"<image {part_digest(p) or 'remote'}>"}}
            if isinstance(p, dict) and p.get("type") == "image_url"
            else p
            for p in content
        ]
        out.append({**message, "content": parts})
    return out
