"""The one door to tools, and the errors and checks an agent run shares with workflows.

Split from :mod:`iatros.agents.runner` (the model loop): what is here has no model in
it — the tools a tenant may use and how they are called (only listed, enabled and
permitted tools, with arguments valid against their schema), the ``execute_tool`` span,
JSON Schema checks, reading a model's JSON answer, and the error every agent limit raises.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import orjson

from iatros.auth import Principal
from iatros.errors import GatewayError
from iatros.governance.roles import allowed
from iatros.observability.spans import RequestTrace, SpanRecord, child_span
from iatros.tools import Tool, ToolContext, ToolResult, permission


class AgentFailed(GatewayError):
    """The agent could not produce an acceptable answer (its output broke its contract,
    its limits were reached, or its input was refused); ``code`` says which:
    ``agent_input_invalid``, ``agent_output_invalid``, ``agent_max_steps``,
    ``agent_max_tool_calls``, ``agent_timeout``, ``agent_budget_exceeded``."""

    status = 422
    type = "invalid_request_error"
    code = "agent_failed"


def schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Each violation of ``schema`` by ``value``, as ``path: message``."""
    out: list[str] = []
    for err in jsonschema_rs.validator_for(schema).iter_errors(value):
        path = "/".join(str(p) for p in err.instance_path) or "(root)"
        out.append(f"{path}: {err.message}")
    return out


@dataclass(slots=True)
class ToolBox:
    """The tools a tenant may use, and the one door through which any tool is called."""

    tools: Mapping[str, Tool]
    enabled: Collection[str]
    services: Mapping[str, Any] = field(default_factory=dict)

    def offer(self, names: list[str]) -> list[Tool]:
        return [self.tools[n] for n in names if n in self.tools and n in self.enabled]

    async def call(
        self, name: str, arguments: Any, principal: Principal, request_id: str,
        allowed_names: Collection[str] | None = None,
    ) -> ToolResult:  # fmt: skip
        tool = self.tools.get(name)
        if tool is None or name not in self.enabled or (
            allowed_names is not None and name not in allowed_names
        ):
            return ToolResult(f"tool {name!r} is not available", {"refused": True}, True)
        needed = permission(tool)
        if not allowed(principal.role, needed, principal.capabilities):
            return ToolResult(
                f"tool {name!r} needs the {needed!r} permission", {"refused": True}, True
            )
        if not isinstance(arguments, dict):
            return ToolResult("tool arguments must be a JSON object", is_error=True)
        problems = schema_errors(tool.parameters, arguments)
        if problems:
            return ToolResult("invalid arguments: " + "; ".join(problems[:5]), is_error=True)
        context = ToolContext(
            tenant=principal.tenant, request_id=request_id, principal=principal,
            services=self.services,
        )  # fmt: skip
        try:
            return await tool(arguments, context)
        except GatewayError as exc:
            return ToolResult(f"tool {name!r} failed: {exc.message}", is_error=True)
        except Exception as exc:  # a plugin's bug is the step's failure, not the server's
            return ToolResult(f"tool {name!r} failed: {type(exc).__name__}", is_error=True)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_json(text: str) -> Any:
    """The JSON in a model's answer (code fences and text around one object tolerated)."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        start, end = body.find("{"), body.rfind("}")
        if start >= 0 and end > start:
            return orjson.loads(body[start : end + 1])
        raise


def tool_span(
    trace: RequestTrace | None, parent: SpanRecord | None, name: str, call_id: str = ""
) -> Any:
    """An ``execute_tool`` span (GenAI conventions), under ``parent`` when given."""
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
    if call_id:
        attributes["gen_ai.tool.call.id"] = call_id
    return child_span(trace, parent, f"execute_tool {name}", **attributes)


def merge_tool_deltas(calls: dict[int, dict[str, Any]], pieces: list[dict[str, Any]]) -> None:
    """Assemble streamed ``tool_calls`` pieces (by index: id and name once, arguments in
    fragments) into whole calls."""
    for piece in pieces:
        index = int(piece.get("index", len(calls)))
        call = calls.setdefault(index, {"id": "", "type": "function",
                                        "function": {"name": "", "arguments": ""}})  # fmt: skip
        if piece.get("id"):
            call["id"] = piece["id"]
        fn = piece.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] = fn["name"]
        call["function"]["arguments"] += fn.get("arguments") or ""
