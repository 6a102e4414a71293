"""One agent run: model calls through the chat service, tool calls, an output contract.

Every model call is a request of the chat service (endpoint ``agent``), so routing,
cache, budgets, rate limits, usage records and audit apply to each step as to a chat
request; its tokens, cost and latency are kept per call. On top: the agent's own limits
(steps, tool calls, timeout, budget), its memory (:mod:`iatros.agents.memory`), a streamed
final answer, and its ``invoke_agent`` span. Tools go through
:class:`~iatros.agents.toolbox.ToolBox`, where a hostile template or a misbehaving model
is stopped: only tools the template lists *and* the tenant has enabled *and* the
caller's role allows, with arguments valid against the tool's schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from iatros.agents.expr import MissingValue, render
from iatros.agents.memory import MemoryStore, Remembered, remember, summary_messages
from iatros.agents.spec import AgentSpec
from iatros.agents.toolbox import (
    AgentFailed,
    ToolBox,
    merge_tool_deltas,
    parse_json,
    schema_errors,
    tool_span,
)
from iatros.auth import Principal
from iatros.errors import GatewayError
from iatros.gateway.chat import Answer, ChatRequest, ChatService
from iatros.gateway.context import RequestContext
from iatros.observability.spans import RequestTrace, SpanRecord, end
from iatros.providers.base import ChatCall, StreamDelta
from iatros.tools import Tool, ToolResult, openai_tool


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
    cost_eur: float = 0.0
    """At the deployments' prices (``price_per_1k_input``/``_output``); a cache hit is free."""
    calls: list[dict[str, Any]] = field(default_factory=list)
    """Each model call: deployment, tokens, cost, latency, cache outcome."""
    sources: dict[str, Any] | None = None
    """The grounding facts (sources, verification) of the answer, for a ``knowledge`` agent."""
    stream: AsyncIterator[StreamDelta] | None = None
    """When the caller asked for a stream and the last call streams: its deltas. The
    fields above are complete once it has been consumed."""


def _user_content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"message"} and isinstance(value["message"], str):
        return value["message"]
    return orjson.dumps(value).decode()


@dataclass(slots=True)
class Invocation:
    """How one agent run is called: by whom, for which request, traced where, and with
    which conversation (memory) and transport (stream) options."""

    principal: Principal
    toolbox: ToolBox
    request_id: str
    messages: list[dict[str, Any]] | None = None
    """A conversation (``agent:<name>`` as a model) instead of an input."""
    conversation_id: str | None = None
    stream: bool = False
    trace: RequestTrace | None = None
    """The caller's trace: the run is an ``invoke_agent`` span in it, its tool calls
    ``execute_tool`` spans, and each model call's trace a child of it."""
    parent: SpanRecord | None = None


Prices = Mapping[str, tuple[float, float]]


class AgentRunner:
    def __init__(
        self, chat: ChatService, tool_calling: Callable[[str], bool | None],
        prices: Prices | None = None, memory: MemoryStore | None = None,
    ) -> None:  # fmt: skip
        self.chat = chat
        self.tool_calling = tool_calling
        self.prices: Prices = prices or {}
        self.memory = memory

    async def run(
        self,
        spec: AgentSpec,
        input_: Any,
        principal: Principal,
        toolbox: ToolBox,
        *,
        request_id: str,
        messages: list[dict[str, Any]] | None = None,
        invocation: Invocation | None = None,
    ) -> AgentResult:
        """Run ``spec`` on ``input_`` (or on a conversation: ``messages``).

        With ``invocation.stream`` and an answer that is text (no output schema), the
        last model call streams: the result's ``stream`` yields its deltas as they come.
        """
        how = invocation or Invocation(principal, toolbox, request_id, messages)
        if spec.input_schema is not None:
            problems = schema_errors(spec.input_schema, input_)
            if problems:
                raise AgentFailed(f"agent {spec.name!r}: input does not fit its input schema: "
                                  + "; ".join(problems[:5]), param="input",
                                  code="agent_input_invalid")  # fmt: skip
        trace = how.trace
        record = None
        if trace is not None:
            record = trace.child(f"invoke_agent {spec.name}", parent=how.parent, **{
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": spec.name,
                "gen_ai.request.model": spec.model})  # fmt: skip
            if how.conversation_id:
                record.attributes["gen_ai.conversation.id"] = how.conversation_id
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + spec.limits.timeout_s
        result = AgentResult(output=None, content="")
        try:
            async with asyncio.timeout_at(deadline):
                await self._run(spec, input_, how, result, record)
        except TimeoutError:
            failure = AgentFailed(f"agent {spec.name!r} timed out after "
                                  f"{spec.limits.timeout_s:g} s", code="agent_timeout")  # fmt: skip
            self._close_span(record, result, failure)
            raise failure from None
        except BaseException as exc:
            self._close_span(record, result, exc)
            raise
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        if result.stream is not None:
            result.stream = self._timed(spec, result.stream, deadline, started, result, record)
        else:
            self._close_span(record, result, None)
        return result

    async def _timed(
        self, spec: AgentSpec, deltas: AsyncIterator[StreamDelta], deadline: float,
        started: float, result: AgentResult, record: SpanRecord | None,
    ) -> AsyncGenerator[StreamDelta, None]:  # fmt: skip
        """The last call's deltas, within the agent's timeout; the span ends with them."""
        failure: BaseException | None = None
        try:
            async with asyncio.timeout_at(deadline):
                async for delta in deltas:
                    yield delta
        except TimeoutError:
            failure = AgentFailed(f"agent {spec.name!r} timed out after "
                                  f"{spec.limits.timeout_s:g} s", code="agent_timeout")  # fmt: skip
            raise failure from None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
            self._close_span(record, result, failure)

    @staticmethod
    def _close_span(
        record: SpanRecord | None, result: AgentResult, failure: BaseException | None
    ) -> None:
        if record is None:
            return
        record.attributes.update({
            "gen_ai.usage.input_tokens": result.prompt_tokens,
            "gen_ai.usage.output_tokens": result.completion_tokens,
            "iatros.agent.model_calls": result.model_calls,
            "iatros.agent.tool_calls": len(result.tool_calls),
            "iatros.cost_eur": round(result.cost_eur, 8),
        })  # fmt: skip
        end(record, failure)

    def _variables(self, spec: AgentSpec, input_: Any) -> dict[str, Any]:
        variables: dict[str, Any] = dict(spec.variables)
        if isinstance(input_, dict):
            variables.update(input_)
        variables["input"] = input_
        return variables

    async def _run(
        self, spec: AgentSpec, input_: Any, how: Invocation, result: AgentResult,
        record: SpanRecord | None,
    ) -> None:  # fmt: skip
        try:
            system = render(spec.instructions, self._variables(spec, input_))
        except MissingValue as exc:
            raise AgentFailed(f"agent {spec.name!r}: {exc}", param="input",
                              code="agent_input_invalid") from None  # fmt: skip
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        remembered: Remembered | None = None
        user_text = _user_content(input_)
        if spec.memory.kind != "none" and how.conversation_id and self.memory is not None:
            remembered = await self.memory.load(how.principal.tenant, spec.name,
                                                how.conversation_id)  # fmt: skip
            messages += remembered.messages()
            if how.messages:  # the memory holds the history: only the new message counts
                last = next((m for m in reversed(how.messages) if m.get("role") == "user"), None)
                user_text = str((last or {}).get("content") or "")
            messages.append({"role": "user", "content": user_text})
        elif how.messages:
            messages += [m for m in how.messages if m.get("role") != "system"]
            last = next((m for m in reversed(how.messages) if m.get("role") == "user"), None)
            user_text = str((last or {}).get("content") or "")
        else:
            messages.append({"role": "user", "content": user_text})
        offered = how.toolbox.offer(spec.tools)
        if spec.tools and self.tool_calling(spec.model) is False:
            raise AgentFailed(f"agent {spec.name!r} lets the model choose tools, but the route "
                              f"{spec.model!r} has a deployment without tool calling")  # fmt: skip
        streamable = how.stream and spec.output_schema is None
        retried = False
        while True:
            self._check_limits(spec, result)
            if streamable:
                message, deltas = await self._ask_streaming(spec, messages, offered, how,
                                                            result, record)  # fmt: skip
                if deltas is not None:
                    result.stream = self._finish_stream(spec, deltas, result, how, remembered,
                                                        user_text)  # fmt: skip
                    return
            else:
                message = await self._ask(spec, messages, offered, how, result, record)
            calls = message.get("tool_calls") or []
            if calls:
                messages.append({"role": "assistant", "content": message.get("content"),
                                 "tool_calls": calls})  # fmt: skip
                for call in calls:
                    messages.append(await self._tool(spec, call, how, result, record))
                continue
            content = str(message.get("content") or "")
            result.content = content
            if spec.output_schema is None:
                result.output = content
                break
            problem = self._check(spec.output_schema, content, result)
            if problem is None:
                break
            if retried:
                raise AgentFailed(f"agent {spec.name!r}: the answer does not fit its output "
                                  f"schema after one retry: {problem}",
                                  code="agent_output_invalid")  # fmt: skip
            retried = True
            messages.append({"role": "assistant", "content": content})
            messages.append({"role": "user", "content": (
                f"Your answer does not fit the required JSON Schema: {problem}. Answer again "
                f"with only a JSON object matching this schema: "
                f"{orjson.dumps(spec.output_schema).decode()}")})  # fmt: skip
        if remembered is not None:
            await self._remember(spec, how, remembered, user_text, result.content)

    def _check_limits(self, spec: AgentSpec, result: AgentResult) -> None:
        """Before a model call: the agent's step and budget limits."""
        limits = spec.limits
        if result.model_calls >= limits.max_steps:
            raise AgentFailed(f"agent {spec.name!r} reached max_steps ({limits.max_steps} "
                              "model calls) without an answer", code="agent_max_steps")  # fmt: skip
        if limits.budget_eur is not None and result.cost_eur >= limits.budget_eur:
            raise AgentFailed(
                f"agent {spec.name!r} spent its budget ({result.cost_eur:.6f} of "
                f"{limits.budget_eur:g} EUR after {result.model_calls} model calls)",
                code="agent_budget_exceeded",
            )

    async def _remember(
        self, spec: AgentSpec, how: Invocation, remembered: Remembered, user: str, answer: str
    ) -> None:
        assert self.memory is not None and how.conversation_id is not None

        async def summarise(turns: list[dict[str, Any]], previous: str | None) -> str:
            fairness = f"{how.principal.tenant}/{how.principal.key_id}"
            call = ChatCall(messages=summary_messages(turns, previous), temperature=0,
                            fairness_key=fairness)  # fmt: skip
            _, answer = await self.chat.ask(how.principal, ChatRequest(spec.model, call),
                                            endpoint="agent")  # fmt: skip
            return answer.content.strip()

        updated = await remember(spec.memory, remembered, user, answer, summarise)
        await self.memory.save(how.principal.tenant, spec.name, how.conversation_id, updated)

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

    def _request(
        self, spec: AgentSpec, messages: list[dict[str, Any]], offered: list[Tool],
        principal: Principal,
    ) -> ChatRequest:  # fmt: skip
        extra: dict[str, Any] = {}
        if offered:
            extra["tools"] = [openai_tool(t) for t in offered]
        if spec.output_schema is not None and spec.settings.structured_output:
            extra["response_format"] = {"type": "json_schema", "json_schema": {
                "name": spec.name.replace("-", "_"), "schema": spec.output_schema,
                "strict": False}}  # fmt: skip
        call = ChatCall(
            messages=list(messages), temperature=spec.settings.temperature,
            max_tokens=spec.settings.max_tokens, extra=extra,
            fairness_key=f"{principal.tenant}/{principal.key_id}",
        )  # fmt: skip
        return ChatRequest(spec.model, call, knowledge=spec.knowledge)

    def _account(self, ctx: RequestContext, result: AgentResult, started: float) -> None:
        """One model call's tokens, cost and latency, into the result."""
        price_in, price_out = self.prices.get(ctx.deployment, (0.0, 0.0))
        usage = ctx.usage
        cost = 0.0 if ctx.cache.startswith("hit") else (
            usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1000
        result.model_calls += 1
        result.prompt_tokens += usage.prompt_tokens
        result.completion_tokens += usage.completion_tokens
        result.cost_eur += cost
        result.deployment = ctx.deployment or result.deployment
        result.calls.append({
            "request_id": ctx.request_id, "deployment": ctx.deployment, "cache": ctx.cache,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "cost_eur": round(cost, 8),
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        })  # fmt: skip

    @staticmethod
    def _traceparent(record: SpanRecord | None, how: Invocation) -> str | None:
        if record is None or how.trace is None:
            return None
        return how.trace.headers_for(record)["traceparent"]

    async def _ask(
        self, spec: AgentSpec, messages: list[dict[str, Any]], offered: list[Tool],
        how: Invocation, result: AgentResult, record: SpanRecord | None,
    ) -> dict[str, Any]:  # fmt: skip
        request = self._request(spec, messages, offered, how.principal)
        started = time.perf_counter()
        ctx, answer = await self.chat.ask(how.principal, request, endpoint="agent",
                                          traceparent=self._traceparent(record, how))  # fmt: skip
        self._account(ctx, result, started)
        result.sources = answer.extension or result.sources
        return answer.message

    async def _ask_streaming(
        self, spec: AgentSpec, messages: list[dict[str, Any]], offered: list[Tool],
        how: Invocation, result: AgentResult, record: SpanRecord | None,
    ) -> tuple[dict[str, Any], AsyncIterator[StreamDelta] | None]:  # fmt: skip
        """A streamed model call: the message when it asks for tools (read whole) or came
        complete (a refusal, a cache hit), else the live deltas of the final answer."""
        request = self._request(spec, messages, offered, how.principal)
        request.stream = True
        request.call.extra["stream_options"] = {"include_usage": True}  # for the accounting
        started = time.perf_counter()
        ctx = RequestContext(principal=how.principal, endpoint="agent")
        self.chat.gateway.tracing.begin(ctx, self._traceparent(record, how))
        try:
            reply = await self.chat.respond(ctx, request)
        except GatewayError as exc:
            ctx.status = exc.status
            self.chat.finish(ctx)
            raise
        result.sources = reply.extension or result.sources
        if isinstance(reply, Answer):
            self.chat.finish(ctx)
            self._account(ctx, result, started)
            return reply.message, None
        deltas = reply.deltas
        # Read until the answer shows what it is: text (the final answer, streamed on) or
        # tool calls (read whole; the agent goes on). The role-only opening chunk says
        # neither.
        seen: list[StreamDelta] = []
        try:
            while True:
                delta = await anext(deltas, None)
                if delta is None:
                    break
                seen.append(delta)
                if delta.delta.get("content") or delta.delta.get("tool_calls") or (
                    delta.finish_reason is not None
                ):
                    break
        except GatewayError as exc:
            ctx.status = exc.status
            self.chat.finish(ctx)
            raise
        if not any("tool_calls" in d.delta for d in seen):
            return {}, self._relay(ctx, seen, deltas, result, started)
        pieces: dict[int, dict[str, Any]] = {}
        content: list[str] = []
        try:
            pending: StreamDelta | None = seen.pop(0) if seen else None
            while pending is not None:
                merge_tool_deltas(pieces, pending.delta.get("tool_calls") or [])
                content.append(pending.delta.get("content") or "")
                pending = seen.pop(0) if seen else await anext(deltas, None)
        except GatewayError as exc:
            ctx.status = exc.status
            raise
        finally:
            self.chat.finish(ctx)
        self._account(ctx, result, started)
        calls = [pieces[i] for i in sorted(pieces)]
        return {"role": "assistant", "content": "".join(content) or None,
                "tool_calls": calls}, None  # fmt: skip

    async def _relay(
        self, ctx: RequestContext, seen: list[StreamDelta],
        deltas: AsyncGenerator[StreamDelta, None], result: AgentResult, started: float,
    ) -> AsyncGenerator[StreamDelta, None]:  # fmt: skip
        """The final answer's deltas as they come; the call is accounted when it ends."""
        pieces: list[str] = []
        try:
            for delta in seen:
                pieces.append(delta.delta.get("content") or "")
                yield delta
            async for delta in deltas:
                pieces.append(delta.delta.get("content") or "")
                yield delta
        except GatewayError as exc:
            ctx.status = exc.status
            raise
        except BaseException:
            ctx.status = 499
            raise
        finally:
            with contextlib.suppress(Exception):
                await deltas.aclose()
            self.chat.finish(ctx)
            self._account(ctx, result, started)
            result.content = "".join(pieces)
            result.output = result.content

    async def _finish_stream(
        self, spec: AgentSpec, deltas: AsyncIterator[StreamDelta], result: AgentResult,
        how: Invocation, remembered: Remembered | None, user_text: str,
    ) -> AsyncGenerator[StreamDelta, None]:  # fmt: skip
        """The streamed answer, then the memory update (once the whole answer is known)."""
        async for delta in deltas:
            yield delta
        if remembered is not None:
            await self._remember(spec, how, remembered, user_text, result.content)

    async def _tool(
        self, spec: AgentSpec, call: dict[str, Any], how: Invocation, result: AgentResult,
        record: SpanRecord | None,
    ) -> dict[str, Any]:  # fmt: skip
        fn = call.get("function") or {}
        name = str(fn.get("name") or "")
        if len(result.tool_calls) >= spec.limits.max_tool_calls:
            raise AgentFailed(f"agent {spec.name!r}: the model asked for more than "
                              f"max_tool_calls ({spec.limits.max_tool_calls}) tool calls",
                              code="agent_max_tool_calls")  # fmt: skip
        try:
            arguments = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        started = time.perf_counter()
        with tool_span(how.trace, record, name, str(call.get("id") or "")) as traced:
            if arguments is None:
                outcome = ToolResult("tool arguments are not valid JSON", is_error=True)
            else:
                outcome = await how.toolbox.call(name, arguments, how.principal,
                                                 how.request_id, spec.tools)  # fmt: skip
            if outcome.is_error:
                traced.set("error.type", "tool_error")
        result.tool_calls.append({"name": name, "arguments": arguments,
                                  "content": outcome.content[:2000],
                                  "is_error": outcome.is_error,
                                  "latency_ms": round((time.perf_counter() - started) * 1000,
                                                      1)})  # fmt: skip
        return {"role": "tool", "tool_call_id": str(call.get("id") or name),
                "content": outcome.content}  # fmt: skip


__all__ = ["AgentFailed", "AgentResult", "AgentRunner", "Invocation", "ToolBox",
           "schema_errors"]  # fmt: skip
