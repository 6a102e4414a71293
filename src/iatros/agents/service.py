"""The agents service: templates, runs, approvals and the loop that resumes waiting runs.

Durability: a run's row is rewritten after every step. A run waiting for an approval
holds nothing in memory: the resume loop (every ``agents.resume_interval_s``) finds
waiting runs whose review item is decided, claims each one (``waiting -> running`` in
one conditional update, so two instances never resume the same run) and replays it. A
starting server finds the runs that were ``running`` when the previous process stopped
and resumes them (or fails them explicitly, ``agents.on_restart: fail``): a run is never
lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from iatros.agents.memory import MemoryStore
from iatros.agents.runner import (
    AgentFailed,
    AgentResult,
    AgentRunner,
    Invocation,
    ToolBox,
    schema_errors,
)
from iatros.agents.settings import AgentSettings
from iatros.agents.spec import AgentSpec, WorkflowSpec
from iatros.agents.store import AgentStore
from iatros.agents.templates import Templates
from iatros.agents.workflow import (
    Rejected,
    RunState,
    StepFailed,
    Waiting,
    WorkflowExecutor,
    expired,
)
from iatros.auth import Principal
from iatros.config import Settings
from iatros.errors import InvalidRequest, NotFound
from iatros.gateway.chat import ChatService
from iatros.gateway.context import RequestContext
from iatros.governance.service import Governance
from iatros.observability.spans import RequestTrace
from iatros.providers.base import Usage
from iatros.reviews.queue import ReviewQueue
from iatros.tools import Tool, load_tools

log = logging.getLogger("iatros.agents")


class AgentService:
    def __init__(
        self,
        settings: Settings,
        chat: ChatService,
        governance: Governance,
        queue: ReviewQueue,
        knowledge: Any = None,
        tools: dict[str, Tool] | None = None,
        scribe: Any = None,
    ) -> None:
        self.settings = settings
        self.config: AgentSettings = settings.agents
        self.governance = governance
        self.store = AgentStore(governance.db)
        self.queue = queue
        self.tools = tools if tools is not None else load_tools()
        self.services: dict[str, Any] = {
            "knowledge": knowledge, "reviews": queue, "agent_settings": self.config,
            "scribe": scribe,
        }  # fmt: skip
        self.templates = Templates(settings, governance, self.store, self.tools)
        prices = {name: (d.price_per_1k_input, d.price_per_1k_output)
                  for name, d in settings.deployments.items()}  # fmt: skip
        self.memory = MemoryStore(governance.db)
        self.runner = AgentRunner(chat, self.templates.tool_calling, prices, self.memory)
        self.tracing = chat.gateway.tracing
        self.executor = WorkflowExecutor(self.runner, queue, self._stored_agent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(self.config.max_concurrent_runs)
        self._agents: dict[tuple[str, str], tuple[float, int, AgentSpec]] = {}

    # -- templates ----------------------------------------------------------------------

    def toolbox(self, tenant: str) -> ToolBox:
        return ToolBox(self.tools, set(self.templates.enabled_tools(tenant)), self.services)

    async def _stored_agent(self, tenant: str, name: str) -> AgentSpec:
        """The latest version of a stored agent, parsed.

        Kept for ``agents.template_cache_s`` (a version applied here is seen at once, one
        applied on another instance within that delay): reading and parsing the template
        was most of an agent call's gateway CPU (bench/results/agents.md).
        """
        now = time.monotonic()
        cached = self._agents.get((tenant, name))
        if cached is not None and cached[0] > now and cached[1] == self.templates.applied:
            return cached[2]
        applied = self.templates.applied
        row = await self.store.template(tenant, name)
        if row["kind"] != "agent":
            raise AgentFailed(f"{name!r} is a workflow, not an agent")
        spec = AgentSpec.model_validate(row["spec"])
        if len(self._agents) > 1000:
            self._agents.clear()
        self._agents[(tenant, name)] = (now + self.config.template_cache_s, applied, spec)
        return spec

    # -- agents as models ---------------------------------------------------------------

    async def call_agent(
        self, principal: Principal, name: str, messages: list[dict[str, Any]], request_id: str,
        *, conversation_id: str | None = None, stream: bool = False,
        trace: RequestTrace | None = None,
    ) -> AgentResult:
        """Run the stored agent ``name`` on a conversation (``model: "agent:<name>"``).

        ``conversation_id`` keys the agent's memory; with ``stream`` the final answer's
        deltas come in the result's ``stream``; ``trace`` is the HTTP request's.
        """
        try:
            spec = await self._stored_agent(principal.tenant, name)
        except NotFound:
            raise NotFound(f"No agent {name!r}.", param="model",
                           code="model_not_found") from None  # fmt: skip
        last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        text = last.get("content") if last else ""
        input_: Any = {"message": text if isinstance(text, str) else ""}
        if spec.input_schema is not None and isinstance(text, str):
            with contextlib.suppress(ValueError):
                input_ = orjson.loads(text)
        conversation = messages if spec.input_schema is None else None
        toolbox = self.toolbox(principal.tenant)
        how = Invocation(principal, toolbox, request_id, conversation, conversation_id, stream,
                         trace)  # fmt: skip
        return await self.runner.run(spec, input_, principal, toolbox, request_id=request_id,
                                     messages=conversation, invocation=how)  # fmt: skip

    # -- runs ---------------------------------------------------------------------------

    async def start_run(
        self, principal: Principal, name: str, input_: Any, *, wait_s: float = 0.0
    ) -> dict[str, Any]:
        tenant = principal.tenant
        template = await self.store.template(tenant, name)
        if template["kind"] != "workflow":
            raise InvalidRequest(f"{name!r} is an agent: call it as model 'agent:{name}'",
                                 param="workflow", code="not_a_workflow")  # fmt: skip
        spec = WorkflowSpec.model_validate(template["spec"])
        if spec.input_schema is not None:
            problems = schema_errors(spec.input_schema, input_)
            if problems:
                raise InvalidRequest("input does not fit the workflow's input schema: "
                                     + "; ".join(problems[:5]), param="input")  # fmt: skip
        run = await self.store.create_run(tenant, template, input_, principal.key_id,
                                          principal.role, principal.capabilities)  # fmt: skip
        self.governance.audit(
            tenant=tenant, actor=principal.key_id, action="agents.run.start", target=run["id"],
            outcome="running", details={"workflow": name, "version": template["version"]},
        )  # fmt: skip
        task = self._spawn(tenant, run["id"], principal)
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait_s)
        return await self.get_run(tenant, run["id"])

    async def get_run(self, scope: str, run_id: str) -> dict[str, Any]:
        run = await self.store.run(scope, run_id)
        for private in ("key_id", "role", "capabilities"):
            run.pop(private, None)
        return run

    def _spawn(self, tenant: str, run_id: str, principal: Principal | None) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._execute(tenant, run_id, principal), name=f"iatros-run-{run_id}"
        )
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run_id, None))
        return task

    async def _execute(self, tenant: str, run_id: str, principal: Principal | None) -> None:
        async with self._slots:
            try:
                await self._execute_run(tenant, run_id, principal)
            except Exception:
                log.exception("run failed unexpectedly", extra={"run_id": run_id})
                with contextlib.suppress(Exception):
                    await self._finish(tenant, run_id, "failed", error="internal error")

    async def _execute_run(self, tenant: str, run_id: str, principal: Principal | None) -> None:
        run = await self.store.run(tenant, run_id)
        if principal is None:  # resumed: act as the key that started it
            principal = Principal(tenant=tenant, key_id=run["key_id"], role=run["role"],
                                  capabilities=tuple(run["capabilities"]))  # fmt: skip
        template = await self.store.template(tenant, run["template"], run["template_version"])
        spec = WorkflowSpec.model_validate(template["spec"])
        state = RunState(run_id, tenant, principal, run["input"],
                         records={r["id"]: r for r in run["steps"]})  # fmt: skip

        async def save() -> None:
            steps = list(state.records.values())
            prompt, completion = _tokens(steps)
            await self.store.save_run(tenant, run_id, steps=steps, prompt_tokens=prompt,
                                      completion_tokens=completion)  # fmt: skip

        state.save = save
        ctx = RequestContext(principal=principal, endpoint="invoke_workflow", request_id=run_id)
        ctx.model = spec.name
        self.tracing.begin(ctx)  # this execution's trace: a resumed run adds another
        if ctx.trace is not None:
            ctx.trace.root.kind = "internal"
        state.trace = ctx.trace
        try:
            output = await self.executor.execute(spec, state, self.toolbox(tenant))
        except Waiting as waiting:
            await self.store.save_run(tenant, run_id, status="waiting",
                                      waiting_review_id=waiting.review_id)  # fmt: skip
            ctx.route = "waiting"
            return
        except Rejected as exc:
            await self._finish(tenant, run_id, "rejected", error=str(exc))
            ctx.status, ctx.route = 409, "rejected"
            return
        except StepFailed as exc:
            await self._finish(tenant, run_id, "failed", error=str(exc))
            ctx.status, ctx.route = 422, "failed"
            return
        finally:
            if ctx.trace is not None:
                ctx.usage = Usage(*_tokens(state.records.values()))
                ctx.trace.finish(ctx)
        await self._finish(tenant, run_id, "succeeded", output=output)

    async def _finish(
        self, tenant: str, run_id: str, status: str, *, output: Any = None,
        error: str | None = None,
    ) -> None:  # fmt: skip
        await self.store.save_run(
            tenant, run_id, status=status, output=output, error=error, waiting_review_id=None,
            finished_at=datetime.now(UTC),
        )  # fmt: skip
        self.governance.audit(tenant=tenant, actor="agents", action="agents.run.finish",
                              target=run_id, outcome=status)  # fmt: skip

    # -- resuming -----------------------------------------------------------------------

    async def start(self) -> None:
        """Watch waiting runs, and take over runs left running by a stopped process."""
        await self.recover_stale()
        self._loop_task = asyncio.get_running_loop().create_task(
            self._resume_loop(), name="iatros-agent-runs"
        )

    async def recover_stale(self) -> int:
        """Resume (or fail, ``agents.on_restart``) runs whose process stopped mid-run."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.config.stale_after_s)
        taken = 0
        for tenant, run_id in await self.store.stale(cutoff):
            if run_id in self._tasks or not await self.store.take_over(tenant, run_id, cutoff):
                continue
            taken += 1
            if self.config.on_restart == "fail":
                await self._finish(tenant, run_id, "failed",
                                   error="interrupted: the server running it stopped")  # fmt: skip
            else:
                log.info("resuming an interrupted run", extra={"run_id": run_id})
                self._spawn(tenant, run_id, None)
        return taken

    async def resume_decided(self) -> int:
        """Resume every waiting run whose review item has been decided; how many."""
        resumed = 0
        for tenant, run_id, review_id in await self.store.runs_in("waiting"):
            if run_id in self._tasks:
                continue
            if review_id is not None:
                try:
                    item = await self.queue.get(tenant, review_id)
                except NotFound:
                    item = {"status": "dismissed"}
                if item["status"] in ("open", "claimed") and not expired(item):
                    continue
            if await self.store.claim(tenant, run_id, "waiting"):
                self._spawn(tenant, run_id, None)
                resumed += 1
        return resumed

    async def _resume_loop(self) -> None:
        touched = time.monotonic()
        while True:
            await asyncio.sleep(self.config.resume_interval_s)
            try:
                if time.monotonic() - touched >= self.config.stale_after_s / 3:
                    touched = time.monotonic()
                    await self.store.touch(list(self._tasks))
                await self.resume_decided()
                await self.recover_stale()
            except Exception as exc:  # the store may be briefly unavailable: try again
                log.warning("resume check failed", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _tokens(records: Iterable[dict[str, Any]]) -> tuple[int, int]:
    steps = list(records)
    prompt = sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in steps)
    completion = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in steps)
    return prompt, completion


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)
