"""Roles and what each may do: the whole permission matrix in one table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Role = Literal["admin", "clinician", "service", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "clinician", "service", "auditor")

PERMISSIONS: dict[str, frozenset[str]] = {
    "chat": frozenset({"admin", "clinician", "service"}),
    "embeddings": frozenset({"admin", "clinician", "service"}),
    "models": frozenset({"admin", "clinician", "service"}),
    "keys:manage": frozenset({"admin"}),
    "usage:read": frozenset({"admin", "auditor"}),
    "audit:read": frozenset({"admin", "auditor"}),
    "deployments:read": frozenset({"admin"}),
    "cache:manage": frozenset({"admin"}),
    "jobs:manage": frozenset({"admin"}),
    "knowledge:read": frozenset({"admin", "clinician", "service"}),
    "knowledge:write": frozenset({"admin", "clinician", "service"}),
    "feedback": frozenset({"admin", "clinician", "service"}),
    "feedback:read": frozenset({"admin", "auditor"}),
    "reviews:ask": frozenset({"admin", "clinician", "service"}),
    "reviews:answer": frozenset({"admin"}),
    "agents:run": frozenset({"admin", "clinician", "service"}),
    "agents:manage": frozenset({"admin"}),
}

Capability = Literal["reviewer"]
CAPABILITIES: tuple[Capability, ...] = ("reviewer",)
CAPABILITY_PERMISSIONS: dict[str, frozenset[str]] = {
    # A clinician key given ``reviewer`` answers the review queue and reads the feedback
    # that comes with it, without becoming an admin.
    "reviewer": frozenset({"reviews:answer", "feedback:read"}),
}


def allowed(role: str, permission: str, capabilities: tuple[str, ...] = ()) -> bool:
    if role in PERMISSIONS[permission]:
        return True
    return any(permission in CAPABILITY_PERMISSIONS.get(c, ()) for c in capabilities)


def check_capabilities(values: Sequence[str]) -> tuple[str, ...]:
    """Known capabilities only, each once, in a stable order."""
    unknown = [v for v in values if v not in CAPABILITIES]
    if unknown:
        raise ValueError(
            f"unknown capability {unknown[0]!r} (capabilities: {', '.join(CAPABILITIES)})"
        )
    return tuple(c for c in CAPABILITIES if c in values)


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    return role
