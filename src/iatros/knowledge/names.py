"""Names checked at the entrance: tenants, collections and document labels.

Every public method of the knowledge base checks its names here before anything
touches a file or a query, so a bad name is a precise :class:`InvalidName` (a 400),
and a document name is only ever a label, never a path.
"""

from __future__ import annotations

import re

from iatros.knowledge.types import InvalidName

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A collection name (also published as the pattern of the API's collection parameters)."""
_COLLECTION = re.compile(COLLECTION_PATTERN)


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
        raise InvalidName("tenant must be a non-empty string of at most 128 characters")
    if any(ord(c) < 32 for c in tenant):
        raise InvalidName("tenant must not contain control characters")
    return tenant


def check_collection(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION.match(name):
        raise InvalidName(
            f"invalid collection name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def document_name(name: str) -> str:
    """``name`` as a clean relative label (no ``..``, no empty parts, no control chars)."""
    cleaned = "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", ".", ".."))
    if not cleaned or len(cleaned) > 512 or any(ord(c) < 32 for c in cleaned):
        raise InvalidName(f"invalid document name {name!r}")
    return cleaned


def mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
