"""The plugin "marketplace": what is installed, from which package and version, and
what loaded or was skipped (and why) — ``GET /v1/plugins`` and ``iatros plugins list``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from iatros.plugins import inventory


def plugin_list() -> list[dict[str, Any]]:
    """Every entry point of Iatros's groups with its state and its distribution's version."""
    rows: list[dict[str, Any]] = []
    for status in inventory():
        row: dict[str, Any] = status.to_dict()
        try:
            row["version"] = version(status.distribution) if status.distribution else None
        except PackageNotFoundError:
            row["version"] = None
        rows.append(row)
    return rows
