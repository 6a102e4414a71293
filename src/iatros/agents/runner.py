"""One agent run: model calls through the chat service, tool calls, an output contract.

Every model call is ``ChatService.ask`` (endpoint ``agents``), so routing, cache,
budgets, rate limits, usage and audit apply to each step as to a chat request. Tools go
through :class:`ToolBox`, which is where a hostile template or a misbehaving model is
stopped: only tools the template lists *and* the tenant has enabled *and* the caller's
role allows, with arguments valid against the tool's schema.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import orjson

from iatros.agents.expr import MissingValue, render
from iatros.agents.spec import AgentSpec
from iatros.auth import Principal
from iatros.errors import GatewayError
from iatros.gateway.chat import ChatRequest, ChatService
from iatros.governance.roles import allowed
from iatros.providers.base import ChatCall
from iatros.tools import Tool, ToolContext, ToolResult, openai_tool, permission


class AgentFailed(GatewayError):
    """The agent could not produce an acceptable answer (its output broke its contract,
    its limits were reached, or its input was refused)."""

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


@dataclass(slots=True)
class AgentResult:
    output: Any
    """The parsed JSON answer when the agent has an output schema, else its text."""
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    deployment: str = ""
    latency_ms: float = 0.0


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


def _user_content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"message"} and isinstance(value["message"], str):
        return value["message"]
    return orjson.dumps(value).decode()


class AgentRunner:
    def __init__(
        self, chat: ChatService, tool_calling: Callable[[str], bool | None]
    ) -> None:
        self.chat = chat
        self.tool_calling = tool_calling

    async def run(
        self,
        spec: AgentSpec,
        input_: Any,
        principal: Principal,
        toolbox: ToolBox,
        *,
        request_id: str,
        messages: list[dict[str, Any]] | None = None,
    ) -> AgentResult:
        """Run ``spec`` on ``input_`` (or on a conversation: ``messages``)."""
        if spec.input_schema is not None:
            problems = schema_errors(spec.input_schema, input_)
            if problems:
                raise AgentFailed(f"agent {spec.name!r}: input does not fit its input schema: "
                                  + "; ".join(problems[:5]), param="input")  # fmt: skip
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.limits.timeout_s):
                result = await self._run(spec, input_, principal, toolbox, request_id, messages)
        except TimeoutError:
            raise AgentFailed(
                f"agent {spec.name!r} timed out after {spec.limits.timeout_s:g} s"
            ) from None
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        return result

    def _variables(self, spec: AgentSpec, input_: Any) -> dict[str, Any]:
        variables: dict[str, Any] = dict(spec.variables)
        if isinstance(input_, dict):
            variables.update(input_)
        variables["input"] = input_
        return variables

    async def _run(
        self, spec: AgentSpec, input_: Any, principal: Principal, toolbox: ToolBox,
        request_id: str, conversation: list[dict[str, Any]] | None,
    ) -> AgentResult:  # fmt: skip
        try:
            system = render(spec.instructions, self._variables(spec, input_))
        except MissingValue as exc:
            raise AgentFailed(f"agent {spec.name!r}: {exc}", param="input") from None
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        if conversation:
            messages += [m for m in conversation if m.get("role") != "system"]
        else:
            messages.append({"role": "user", "content": _user_content(input_)})
        offered = toolbox.offer(spec.tools)
        if spec.tools and self.tool_calling(spec.model) is False:
            raise AgentFailed(f"agent {spec.name!r} lets the model choose tools, but the route "
                              f"{spec.model!r} has a deployment without tool calling")  # fmt: skip
        result = AgentResult(output=None, content="")
        retried = False
        while True:
            if result.model_calls >= spec.limits.max_steps:
                raise AgentFailed(f"agent {spec.name!r} reached max_steps "
                                  f"({spec.limits.max_steps}) without an answer")  # fmt: skip
            message = await self._ask(spec, messages, offered, principal, result)
            calls = message.get("tool_calls") or []
            if calls:
                messages.append({"role": "assistant", "content": message.get("content"),
                                 "tool_calls": calls})  # fmt: skip
                for call in calls:
                    messages.append(
                        await self._tool(spec, call, principal, toolbox, request_id, result)
                    )
                continue
            content = str(message.get("content") or "")
            result.content = content
            if spec.output_schema is None:
                result.output = content
                return result
            problem = self._check(spec.output_schema, content, result)
            if problem is None:
                return result
            if retried:
                raise AgentFailed(f"agent {spec.name!r}: the answer does not fit its output "
                                  f"schema after one retry: {problem}")  # fmt: skip
            retried = True
            messages.append({"role": "assistant", "content": content})
            messages.append({"role": "user", "content": (
                f"Your answer does not fit the required JSON Schema: {problem}. Answer again "
                f"with only a JSON object matching this schema: "
                f"{orjson.dumps(spec.output_schema).decode()}")})  # fmt: skip

    def _check(self, schema: dict[str, Any], content: str, result: AgentResult) -> str | None:
        try:
            value = parse_json(content)
        except orjson.JSONDecodeError:
            return "the answer is not JSON"
        problems = schema_errors(schema, value)
        if problems:
            return "; ".join(problems[:5])
        result.output = value
        return None

    async def _ask(
        self, spec: AgentSpec, messages: list[dict[str, Any]], offered: list[Tool],
        principal: Principal, result: AgentResult,
    ) -> dict[str, Any]:  # fmt: skip
        extra: dict[str, Any] = {}
        if offered:
            extra["tools"] = [openai_tool(t) for t in offered]
        call = ChatCall(
            messages=list(messages), temperature=spec.settings.temperature,
            max_tokens=spec.settings.max_tokens, extra=extra,
            fairness_key=f"{principal.tenant}/{principal.key_id}",
        )  # fmt: skip
        request = ChatRequest(spec.model, call, knowledge=spec.knowledge)
        ctx, answer = await self.chat.ask(principal, request, endpoint="agents")
        result.model_calls += 1
        result.prompt_tokens += ctx.usage.prompt_tokens
        result.completion_tokens += ctx.usage.completion_tokens
        result.deployment = ctx.deployment or result.deployment
        return answer.message

    async def _tool(
        self, spec: AgentSpec, call: dict[str, Any], principal: Principal, toolbox: ToolBox,
        request_id: str, result: AgentResult,
    ) -> dict[str, Any]:  # fmt: skip
        fn = call.get("function") or {}
        name = str(fn.get("name") or "")
        if len(result.tool_calls) >= spec.limits.max_tool_calls:
            outcome = ToolResult(f"max_tool_calls ({spec.limits.max_tool_calls}) reached: "
                                 "answer now", is_error=True)  # fmt: skip
        else:
            try:
                arguments = orjson.loads(fn.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                arguments = None
            if arguments is None:
                outcome = ToolResult("tool arguments are not valid JSON", is_error=True)
            else:
                outcome = await toolbox.call(name, arguments, principal, request_id, spec.tools)
            result.tool_calls.append({"name": name, "arguments": arguments,
                                      "content": outcome.content[:2000],
                                      "is_error": outcome.is_error})  # fmt: skip
        return {"role": "tool", "tool_call_id": str(call.get("id") or name),
                "content": outcome.content}  # fmt: skip
