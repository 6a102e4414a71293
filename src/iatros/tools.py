"""Tools an agent may call, registered through the ``iatros.tools`` entry points.

The built-in tools (:mod:`iatros.agents.builtin_tools`) register here exactly as a tool
package does, so a tool package plugs in like a provider or a parser::

    [project.entry-points."iatros.tools"]
    drug_interactions = "my_package.tools:DrugInteractions"

An entry point names a :class:`Tool` (an instance, or a class built without
arguments). A tool that fails to import, or whose name or parameter schema is unusable
by the OpenAI tool-calling format, is logged and skipped (:mod:`iatros.plugins`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from iatros.plugins import TOOLS, load_group

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""The OpenAI function-name rule, so every tool can be offered to any model."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who is asking: a tool must scope what it reads and does to this tenant."""

    tenant: str
    request_id: str
    patient_id: str | None = None
    principal: Any = None
    """The caller (an :class:`iatros.auth.Principal`), for tools that act on its behalf."""
    services: Mapping[str, Any] = field(default_factory=dict)
    """Services a tool may use, by name (``knowledge``, ``reviews``, ``agent_settings``):
    handed in by the caller, so a tool never builds its own connection to the store."""


@dataclass(slots=True)
class ToolResult:
    """What the model sees (``content``) and what the workflow may keep (``data``)."""

    content: str
    data: dict[str, Any] = field(default_factory=dict)
    is_error: bool = False


@runtime_checkable
class Tool(Protocol):
    """One callable capability.

    Attributes:
        name: unique, 1-64 letters, digits, ``_`` or ``-``.
        description: what it does, for the model choosing it.
        parameters: the JSON Schema (``{"type": "object", ...}``) of its arguments.

    A tool may also declare ``permission`` (a permission of
    :mod:`iatros.governance.roles` the caller's key must have; ``"chat"`` when absent).
    """

    name: str
    description: str
    parameters: dict[str, Any]

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Run with arguments already validated against :attr:`parameters`."""
        ...


def _build(obj: object) -> Tool:
    tool = obj() if isinstance(obj, type) else obj
    if not isinstance(tool, Tool):
        raise TypeError("not a tool: needs name, description, parameters and async __call__")
    if not _NAME.match(tool.name):
        raise TypeError(f"unusable tool name {tool.name!r}: 1-64 letters, digits, '_' or '-'")
    if not isinstance(tool.parameters, dict) or tool.parameters.get("type") != "object":
        raise TypeError(f"tool {tool.name!r}: parameters must be a JSON Schema object")
    return tool


def load_tools() -> dict[str, Tool]:
    """Every tool that loads, by its name (broken ones are reported and skipped)."""
    tools: dict[str, Tool] = {}
    for tool in load_group(TOOLS, _build).values():
        tools.setdefault(tool.name, tool)
    return tools


def permission(tool: Tool) -> str:
    """The permission a caller needs to use ``tool`` (``"chat"`` unless it declares one)."""
    return str(getattr(tool, "permission", "chat"))


def openai_tool(tool: Tool) -> dict[str, Any]:
    """The tool as an entry of the OpenAI ``tools`` request field."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }
