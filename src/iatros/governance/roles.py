"""Roles and what each may do: the whole permission matrix in one table."""

from __future__ import annotations

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
    "knowledge:read": frozenset({"admin", "clinician", "service"}),
    "knowledge:write": frozenset({"admin", "clinician", "service"}),
    "feedback": frozenset({"admin", "clinician", "service"}),
}


def allowed(role: str, permission: str) -> bool:
    return role in PERMISSIONS[permission]


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    return role
