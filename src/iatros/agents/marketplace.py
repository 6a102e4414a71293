"""The plugin "marketplace": what is installed, from which package and version, and
what loaded or was skipped (and why) — ``GET /v1/plugins`` and ``iatros plugins list``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from typing import Any

import yaml

from iatros.plugins import inventory


def gallery() -> list[dict[str, Any]]:
    """The templates shipped with Iatros (``agents/gallery``), with their text to apply."""
    items: list[dict[str, Any]] = []
    folder = files("iatros.agents").joinpath("gallery")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith((".yaml", ".yml", ".json")):
            continue
        text = entry.read_text()
        doc = yaml.safe_load(text) or {}
        items.append({"file": entry.name, "name": doc.get("name"), "kind": doc.get("kind"),
                      "description": str(doc.get("description") or "").strip(),
                      "content": text})  # fmt: skip
    return items


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
