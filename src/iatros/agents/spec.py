"""What an agent or workflow template is: the pydantic models behind the published schema.

The JSON Schema served at ``GET /v1/schemas/agent.json`` (and printed by ``iatros agents
schema``) is generated from these models, so the document a user validates against in
their editor and the one the server enforces cannot drift apart. ``version`` is the
schema version a template was written for: older ones are migrated on load
(:data:`MIGRATIONS`), newer ones are refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION = 1
"""The template format this Iatros reads and writes."""
SCHEMA_ID = "https://iatros.dev/schemas/agent.json"

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}
"""``n -> function`` turning a version-``n`` document into version ``n + 1``.

Empty while there is only version 1; the loader applies the chain, so a format change
only adds an entry here (and tests of it), never a second parser.
"""

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case letters, digits, - _")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Limits(_Strict):
    max_steps: int = Field(6, ge=1, le=50, description="Model calls per agent run.")
    max_tool_calls: int = Field(8, ge=0, le=100, description="Tool calls per agent run.")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Wall time per agent run.")
    budget_eur: float | None = Field(
        None, gt=0, le=1000,
        description="Cost of the run's model calls (EUR at the deployments' prices); a call "
        "is not started once it is spent.",
    )  # fmt: skip


class Memory(_Strict):
    """What an agent remembers of a conversation (``iatros.conversation_id``) between calls."""

    kind: Literal["none", "conversation", "summary"] = Field(
        "none",
        description="none: every call starts afresh; conversation: the last turns are kept; "
        "summary: older turns are summarised once the kept ones exceed max_tokens.",
    )
    turns: int = Field(10, ge=1, le=100, description="Turns (user + assistant) kept verbatim.")
    max_tokens: int = Field(
        1500, ge=100, le=32768, description="summary: kept turns above this are summarised."
    )


class ModelSettings(_Strict):
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    structured_output: bool = Field(
        True,
        description="With an output schema, ask the model for JSON of that schema "
        "(response_format json_schema; the local model enforces it with a grammar).",
    )


class AgentSpec(_Strict):
    """One agent: instructions, a model route, tools, and a contract for its output."""

    schema_: str | None = Field(None, alias="$schema")
    version: int = Field(SCHEMA_VERSION, ge=1)
    kind: Literal["agent"]
    name: Name
    description: str = ""
    instructions: str = Field(
        min_length=1,
        description="The system prompt; {{ name }} is replaced by a variable or input field.",
    )
    variables: dict[str, str] = Field(default_factory=dict, description="Defaults for {{ }}.")
    model: str = Field(min_length=1, max_length=128, description="A logical model (route).")
    settings: ModelSettings = Field(default_factory=ModelSettings)
    tools: list[str] = Field(default_factory=list, description="Tools the model may call.")
    knowledge: str | None = Field(None, description="A collection to ground answers in.")
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema of the answer; checked, retried once with the error."
    )
    limits: Limits = Field(default_factory=Limits)
    memory: Memory = Field(default_factory=Memory)

    @model_validator(mode="before")
    @classmethod
    def _memory_shorthand(cls, data: Any) -> Any:
        """``memory: conversation`` is short for ``memory: {kind: conversation}``."""
        if isinstance(data, dict) and isinstance(data.get("memory"), str):
            data = {**data, "memory": {"kind": data["memory"]}}
        return data


class Condition(_Strict):
    """``ref`` (a ``${...}`` reference without the braces) compared with ``value``."""

    ref: str = Field(min_length=1, description="e.g. steps.triage.output.urgency")
    op: Literal["equals", "not_equals", "in", "not_in", "gt", "gte", "lt", "lte", "truthy",
                "falsy"] = "equals"  # fmt: skip
    value: Any = None


class Branch(_Strict):
    if_: Condition = Field(alias="if")
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")


class Loop(_Strict):
    max_iterations: int = Field(ge=1, le=20)
    until: Condition | None = None
    steps: list[Step] = Field(min_length=1)


class Approval(_Strict):
    question: str = Field(min_length=1, description="What the reviewer decides; ${...} allowed.")
    show: Any = Field(None, description="Data shown to the reviewer (references allowed).")
    on_reject: Literal["fail", "continue"] = "fail"
    timeout_s: float | None = Field(
        None, gt=0, le=90 * 86400, description="No decision in this time: the item is closed."
    )
    on_timeout: Literal["fail", "continue"] = Field(
        "fail", description="fail the run, or continue with decision 'timed_out'."
    )


STEP_KINDS = ("agent", "tool", "branch", "loop", "parallel", "approval")


class Step(_Strict):
    """One step; exactly one of ``agent``, ``tool``, ``branch``, ``loop``, ``parallel``,
    ``approval``."""

    id: Name
    agent: str | None = Field(None, description="An agent (inline or stored) to call.")
    input: Any = Field(None, description="The agent's input; ${...} references allowed.")
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    branch: Branch | None = None
    loop: Loop | None = None
    parallel: list[list[Step]] | None = Field(None, min_length=1)
    approval: Approval | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            raise ValueError(f"a step has exactly one of {', '.join(STEP_KINDS)} (found: {found})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)

    def children(self) -> list[list[Step]]:
        """The nested step lists (branch arms, loop body, parallel branches)."""
        if self.branch is not None:
            return [self.branch.then, self.branch.else_]
        if self.loop is not None:
            return [self.loop.steps]
        return list(self.parallel or [])


class WorkflowSpec(_Strict):
    """Steps run in order; data flows between them by ``${...}`` references."""

    schema_: str | None = Field(None, alias="$schema")
    version: int = Field(SCHEMA_VERSION, ge=1)
    kind: Literal["workflow"]
    name: Name
    description: str = ""
    input_schema: dict[str, Any] | None = None
    agents: dict[str, AgentSpec] = Field(
        default_factory=dict, description="Agents defined with the workflow (by name)."
    )
    steps: list[Step] = Field(min_length=1)
    output: Any = Field(None, description="The run's output; ${...} references allowed.")


for _model in (Branch, Loop, Step):
    _model.model_rebuild()

Template = Annotated[AgentSpec | WorkflowSpec, Field(discriminator="kind")]
TEMPLATE: TypeAdapter[AgentSpec | WorkflowSpec] = TypeAdapter(Template)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema (draft 2020-12) of a template, agent or workflow."""
    schema = TEMPLATE.json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Iatros agent or workflow template",
        "description": f"Template format version {SCHEMA_VERSION}.",
        **schema,
    }


def walk(steps: list[Step]) -> list[Step]:
    """Every step, nested ones included, in document order."""
    out: list[Step] = []
    for step in steps:
        out.append(step)
        for child in step.children():
            out.extend(walk(child))
    return out
