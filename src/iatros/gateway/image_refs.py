"""Stored images named in chat requests (``iatros://<source>/<path>``), read for the asker.

A client that already stored an image here (a radiograph) may name it instead of sending
it again: ``{"type": "image_url", "image_url": {"url": "iatros://radiographs/images/<id>"}}``.
The chat service replaces each reference with the image itself (a data URL) before the
cache, routing and the upstream see the request, so the cache keys it by the digest of
its bytes like any image, and the upstream never receives a URL it would have to fetch.

A source is a feature's reader, registered on the chat service by the composition root
(``ChatService.image_sources``); it reads for the asking principal, so another tenant's
image is a 404 and the access is audited by the feature as any other read of it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from iatros.auth import Principal
from iatros.errors import GatewayError, InvalidRequest
from iatros.image_parts import ImageInputSettings, image_parts, reference, remember


class ImageSource(Protocol):
    """Reads the image at ``path`` for ``principal``: (bytes, MIME type).

    Raises :class:`GatewayError` (404 for an image the principal may not see)."""

    async def __call__(self, principal: Principal, path: str) -> tuple[bytes, str]: ...


async def resolve_references(
    principal: Principal,
    messages: list[dict[str, Any]],
    sources: Mapping[str, ImageSource],
    settings: ImageInputSettings,
) -> list[dict[str, Any]]:
    """``messages`` with every ``iatros://`` image replaced by a data URL (new lists and
    dicts where something changed; the caller's are left as they were)."""
    out = list(messages)
    for i, j, part in list(image_parts(messages)):
        image = part["image_url"]
        named = reference(image["url"])
        if named is None:
            continue
        where = f"messages.{i}.content.{j}.image_url.url"
        source, path = named
        try:
            data, mime = await sources[source](principal, path)
        except GatewayError as exc:
            exc.param = where
            raise
        if mime not in settings.mime_types or len(data) > settings.max_image_bytes:
            raise InvalidRequest(
                f"Invalid '{where}': the stored image ({mime}, {len(data)} bytes) is not "
                "accepted by images.mime_types / images.max_image_bytes.",
                param=where,
                code="image_too_large" if mime in settings.mime_types else "invalid_image",
            )
        url = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        remember(url, hashlib.sha256(data).hexdigest())  # the cache keys it without decoding
        message = out[i] = dict(out[i])
        content = message["content"] = list(message["content"])
        content[j] = {**part, "image_url": {**image, "url": url}}
    return out
