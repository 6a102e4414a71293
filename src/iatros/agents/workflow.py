"""Running a workflow by replaying its persisted step records.

A run's state is the list of its step records (saved after every step). Executing a run
walks the steps in order and *reuses* the record of any step already done, so resuming
after an approval, or after a restart, is the same code as the first execution: steps
that finished are not repeated, branches keep the arm they took, loops their iteration
count, and an interrupted step runs again from its start.

An approval step opens a review item (kind ``approval``) and raises :class:`Waiting`;
the service resumes the run when the item is decided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from iatros.agents.expr import MissingValue, holds, resolve
from iatros.agents.runner import AgentRunner, Invocation
from iatros.agents.spec import AgentSpec, Step, WorkflowSpec
from iatros.agents.toolbox import AgentFailed, ToolBox, tool_span
from iatros.auth import Principal
from iatros.errors import Conflict
from iatros.observability.spans import RequestTrace
from iatros.reviews.queue import NewReview, ReviewQueue

TIMED_OUT = "timed out: no decision before the approval's deadline"
SYSTEM = "agents"
"""The actor of changes the runs make themselves (closing a timed-out approval)."""


def deadline(timeout_s: float | None) -> dict[str, str]:
    """The ``expires_at`` an approval item carries when its step has a timeout."""
    if timeout_s is None:
        return {}
    return {"expires_at": (datetime.now(UTC) + timedelta(seconds=timeout_s)).isoformat()}


def expired(item: dict[str, Any]) -> bool:
    """Whether an approval item's deadline (``details.expires_at``) has passed."""
    expires = (item.get("details") or {}).get("expires_at")
    return bool(expires) and datetime.fromisoformat(str(expires)) <= datetime.now(UTC)


class Waiting(Exception):
    """The run waits for a human decision on ``review_id``."""

    def __init__(self, review_id: str) -> None:
        super().__init__(review_id)
        self.review_id = review_id


class Rejected(Exception):
    """An approval was rejected (or dismissed) and the step says ``on_reject: fail``."""


class StepFailed(Exception):
    pass


@dataclass(slots=True)
class RunState:
    run_id: str
    tenant: str
    principal: Principal
    input: Any
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    save: Callable[[], Awaitable[None]] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    trace: RequestTrace | None = None
    """This execution's trace (agent steps are ``invoke_agent`` spans in it, tool steps
    ``execute_tool``); None when tracing is off."""

    def data(self, scope: dict[str, Any]) -> dict[str, Any]:
        return {"input": self.input, "steps": self.outputs, "loop": scope}

    def done(self, key: str) -> dict[str, Any] | None:
        rec = self.records.get(key)
        return rec if rec is not None and rec["status"] == "succeeded" else None

    async def record(self, rec: dict[str, Any]) -> None:
        self.records[rec["id"]] = rec
        if rec["status"] == "succeeded":
            self.outputs[rec["step"]] = {"output": rec.get("output")}
        if self.save is not None:
            await self.save()


def _now() -> str:
    return datetime.now(UTC).isoformat()


AgentLookup = Callable[[str, str], Awaitable[AgentSpec]]


class WorkflowExecutor:
    def __init__(self, runner: AgentRunner, queue: ReviewQueue, lookup: AgentLookup) -> None:
        self.runner = runner
        self.queue = queue
        self.lookup = lookup

    async def execute(self, spec: WorkflowSpec, state: RunState, toolbox: ToolBox) -> Any:
        """The workflow's output; raises :class:`Waiting`, :class:`Rejected` or
        :class:`StepFailed` (with the step's record saved)."""
        await self._walk(spec, spec.steps, state, toolbox, {}, "")
        data = state.data({})
        if spec.output is None:
            last = spec.steps[-1].id
            return state.outputs.get(last, {}).get("output")
        try:
            return resolve(spec.output, data)
        except MissingValue as exc:
            raise StepFailed(f"output: {exc}") from None

    async def _walk(
        self, spec: WorkflowSpec, steps: list[Step], state: RunState, toolbox: ToolBox,
        scope: dict[str, Any], suffix: str,
    ) -> None:  # fmt: skip
        for step in steps:
            await self._step(spec, step, state, toolbox, scope, suffix)

    async def _step(
        self, spec: WorkflowSpec, step: Step, state: RunState, toolbox: ToolBox,
        scope: dict[str, Any], suffix: str,
    ) -> None:  # fmt: skip
        key = step.id + suffix
        done = state.done(key)
        if done is not None and step.kind in ("agent", "tool", "approval"):
            state.outputs[step.id] = {"output": done.get("output")}
            return
        if step.kind == "approval":
            await self._approval(spec, step, key, state, scope)
            return
        rec: dict[str, Any] = {"id": key, "step": step.id, "kind": step.kind,
                               "status": "running", "started_at": _now()}  # fmt: skip
        started = time.perf_counter()
        data = state.data(scope)
        try:
            if step.kind == "agent":
                await self._agent(spec, step, state, toolbox, data, rec)
            elif step.kind == "tool":
                await self._tool(step, state, toolbox, data, rec)
            elif step.branch is not None:
                taken = (done or {}).get("output", {}).get("taken") if done else None
                if taken is None:
                    taken = "then" if holds(step.branch.if_, data) else "else"
                    await state.record({**rec, "status": "succeeded",
                                        "output": {"taken": taken}})  # fmt: skip
                arm = step.branch.then if taken == "then" else step.branch.else_
                await self._walk(spec, arm, state, toolbox, scope, suffix)
                return
            elif step.loop is not None:
                await self._loop(spec, step, state, toolbox, scope, suffix, rec)
                return
            elif step.parallel is not None:
                await self._parallel(spec, step, state, toolbox, scope, suffix, rec)
                return
        except (MissingValue, AgentFailed) as exc:
            message = exc.message if isinstance(exc, AgentFailed) else str(exc)
            rec.update(status="failed", error=message, finished_at=_now(),
                       latency_ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
            await state.record(rec)
            raise StepFailed(f"step {key!r}: {message}") from None
        rec.update(status="succeeded", finished_at=_now(),
                   latency_ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
        await state.record(rec)

    async def _agent(
        self, spec: WorkflowSpec, step: Step, state: RunState, toolbox: ToolBox,
        data: dict[str, Any], rec: dict[str, Any],
    ) -> None:  # fmt: skip
        assert step.agent is not None
        agent = spec.agents.get(step.agent) or await self.lookup(state.tenant, step.agent)
        value = resolve(step.input, data) if step.input is not None else state.input
        rec["input"] = value
        how = Invocation(state.principal, toolbox, state.run_id, trace=state.trace)
        try:
            result = await self.runner.run(agent, value, state.principal, toolbox,
                                           request_id=state.run_id, invocation=how)  # fmt: skip
        except AgentFailed as exc:
            rec["code"] = exc.code
            raise
        rec.update(output=result.output, deployment=result.deployment,
                   tool_calls=result.tool_calls, model_calls=result.model_calls,
                   calls=result.calls, cost_eur=round(result.cost_eur, 8),
                   usage={"prompt_tokens": result.prompt_tokens,
                          "completion_tokens": result.completion_tokens})  # fmt: skip

    async def _tool(
        self, step: Step, state: RunState, toolbox: ToolBox, data: dict[str, Any],
        rec: dict[str, Any],
    ) -> None:  # fmt: skip
        assert step.tool is not None
        arguments = resolve(step.arguments or {}, data)
        rec["input"] = arguments
        with tool_span(state.trace, None, step.tool) as traced:
            outcome = await toolbox.call(step.tool, arguments, state.principal, state.run_id)
            if outcome.is_error:
                traced.set("error.type", "tool_error")
        if outcome.is_error:
            raise AgentFailed(f"tool {step.tool!r}: {outcome.content}")
        rec["output"] = {"content": outcome.content, **outcome.data}

    async def _loop(
        self, spec: WorkflowSpec, step: Step, state: RunState, toolbox: ToolBox,
        scope: dict[str, Any], suffix: str, rec: dict[str, Any],
    ) -> None:  # fmt: skip
        assert step.loop is not None
        iterations = 0
        for i in range(step.loop.max_iterations):
            inner = {**scope, "index": i}
            await self._walk(spec, step.loop.steps, state, toolbox, inner, f"{suffix}#{i}")
            iterations = i + 1
            until = step.loop.until
            if until is not None and holds(until, state.data(inner)):
                break
        await state.record({**rec, "status": "succeeded", "finished_at": _now(),
                            "output": {"iterations": iterations}})  # fmt: skip

    async def _parallel(
        self, spec: WorkflowSpec, step: Step, state: RunState, toolbox: ToolBox,
        scope: dict[str, Any], suffix: str, rec: dict[str, Any],
    ) -> None:  # fmt: skip
        arms = step.parallel or []
        outcomes = await asyncio.gather(
            *(self._walk(spec, arm, state, toolbox, scope, suffix) for arm in arms),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for err in errors:  # a failure wins over a wait: the run cannot complete anyway
            if not isinstance(err, Waiting):
                raise err
        if errors:
            raise errors[0]
        outputs = [state.outputs.get(arm[-1].id, {}).get("output") for arm in arms if arm]
        await state.record({**rec, "status": "succeeded", "finished_at": _now(),
                            "output": outputs})  # fmt: skip

    async def _time_out(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        """Close an expired approval item (unless a reviewer decided it meanwhile)."""
        system = Principal(tenant=tenant, key_id=SYSTEM, role="admin")
        try:
            return await self.queue.dismiss(tenant, item["id"], system, TIMED_OUT)
        except Conflict:  # decided in the meantime: that decision stands
            return await self.queue.get(tenant, item["id"])

    async def _approval(
        self, spec: WorkflowSpec, step: Step, key: str, state: RunState, scope: dict[str, Any]
    ) -> None:
        assert step.approval is not None
        rec = state.records.get(key)
        if rec is not None and rec.get("review_id"):
            item = await self.queue.get(state.tenant, rec["review_id"])
            if item["status"] in ("open", "claimed"):
                if not expired(item):
                    raise Waiting(rec["review_id"])
                item = await self._time_out(state.tenant, item)
            decision = item.get("decision") or "rejected"  # dismissed: not approved
            if item["status"] == "dismissed" and item.get("answer") == TIMED_OUT:
                decision = "timed_out"
            output = {"decision": decision, "comment": item.get("answer"),
                      "reviewer": item.get("reviewer_name") or item.get("answered_by")}  # fmt: skip
            if decision == "timed_out" and step.approval.on_timeout == "fail":
                await state.record({**rec, "output": output, "finished_at": _now(),
                                    "status": "failed", "error": "approval timed out"})  # fmt: skip
                raise StepFailed(f"step {key!r}: the approval timed out (no decision in "
                                 f"{step.approval.timeout_s:g} s)")  # fmt: skip
            rejected = decision == "rejected" and step.approval.on_reject == "fail"
            await state.record({**rec, "output": output, "finished_at": _now(),
                                "status": "rejected" if rejected else "succeeded"})  # fmt: skip
            if rejected:
                raise Rejected(f"step {key!r}: the approval was {decision}")
            return
        data = state.data(scope)
        try:
            question = str(resolve(step.approval.question, data))
            show = resolve(step.approval.show, data)
        except MissingValue as exc:
            await state.record({"id": key, "step": step.id, "kind": "approval",
                                "status": "failed", "error": str(exc)})  # fmt: skip
            raise StepFailed(f"step {key!r}: {exc}") from None
        item = await self.queue.open(NewReview(
            tenant=state.tenant, asker_key_id=state.principal.key_id, reason="approval",
            kind="approval", question=question, route=f"workflow:{spec.name}",
            details={"run_id": state.run_id, "step": key, "workflow": spec.name, "show": show,
                     **deadline(step.approval.timeout_s)},
            request_id=state.run_id,
        ))  # fmt: skip
        await state.record({"id": key, "step": step.id, "kind": "approval", "status": "waiting",
                            "input": {"question": question, "show": show},
                            "review_id": item["id"], "started_at": _now()})  # fmt: skip
        raise Waiting(item["id"])
