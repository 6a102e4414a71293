"""Reading a template: YAML or JSON with line marks, migrated, validated, cross-checked.

Users of agent frameworks complain that a YAML mistake surfaces as a stack trace deep in
a run. Here every problem is found at load time and said as ``file:line: field: what``:
schema violations (from pydantic, mapped back to the line of the offending key), a
version newer than this Iatros reads, unknown or disabled tools, an agent that needs tool
calling on a route without it, references to steps that do not exist, run later, or form
a cycle, and fields an agent's output schema does not have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import orjson
import yaml
from pydantic import ValidationError

from iatros.agents.expr import REF, ROOTS, VAR, refs_in
from iatros.agents.spec import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TEMPLATE,
    AgentSpec,
    Condition,
    Step,
    WorkflowSpec,
    walk,
)
from iatros.tools import Tool

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.field or '(document)'}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "line": self.line, "field": self.field,
                "message": self.message}  # fmt: skip


class TemplateError(Exception):
    """A template that cannot be used; ``problems`` says every place that is wrong."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


@dataclass(slots=True)
class Checks:
    """What a template is checked against: the tenant's tools, agents and routes."""

    tools: Mapping[str, Tool] = field(default_factory=dict)
    enabled: Collection[str] = ()
    agents: Mapping[str, AgentSpec] = field(default_factory=dict)
    """The tenant's stored agents, which a workflow may call by name."""
    tool_calling: Callable[[str], bool | None] = lambda route: None
    """Whether a route's deployments take OpenAI ``tools`` (None: unknown route)."""


@dataclass(slots=True)
class Loaded:
    spec: AgentSpec | WorkflowSpec
    document: dict[str, Any]
    digest: str


def field_name(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lines(node: yaml.Node, path: Path, out: dict[Path, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)  # a key's own line comes first
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            out[(*path, name)] = key.start_mark.line + 1
            _lines(value, (*path, name), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


class Document:
    """A parsed file: its data and the line of every key (YAML and JSON alike)."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            reason = getattr(exc, "problem", None) or str(exc)
            problem = Problem(source, line, "", f"not valid YAML/JSON: {reason}")
            raise TemplateError([problem]) from None
        if not isinstance(data, dict) or node is None:
            raise TemplateError([Problem(source, 1, "", "a template is a mapping (object)")])
        self.data: dict[str, Any] = data
        self.lines: dict[Path, int] = {}
        _lines(node, (), self.lines)

    def line(self, path: Path) -> int | None:
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return None

    def problem(self, path: Path, message: str) -> Problem:
        return Problem(self.source, self.line(path), field_name(path), message)


def migrate(doc: Document) -> dict[str, Any]:
    """The document at :data:`SCHEMA_VERSION`, or an error naming ``version``."""
    data = dict(doc.data)
    version = data.get("version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TemplateError([doc.problem(("version",), "must be a positive integer")])
    if version > SCHEMA_VERSION:
        raise TemplateError([doc.problem(("version",), (
            f"version {version} is newer than this Iatros reads (up to {SCHEMA_VERSION}): "
            "upgrade Iatros or write the template for this version"))])  # fmt: skip
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise TemplateError(
                [doc.problem(("version",), f"no migration from version {version}")]
            )
        data = step(data)
        version += 1
        data["version"] = version
    return data


def _schema_problems(doc: Document, exc: ValidationError, kind: str) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if loc and loc[0] == kind:  # the discriminated union's tag
            loc = loc[1:]
        path = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(doc.problem(path, msg))
    return out


def parse(text: str, source: str) -> tuple[Document, AgentSpec | WorkflowSpec]:
    doc = Document(text, source)
    data = migrate(doc)
    kind = data.get("kind")
    if kind not in ("agent", "workflow"):
        raise TemplateError([doc.problem(("kind",), "must be 'agent' or 'workflow'")])
    try:
        spec = TEMPLATE.validate_python(data)
    except ValidationError as exc:
        raise TemplateError(_schema_problems(doc, exc, str(kind))) from None
    return doc, spec


def load(text: str, source: str, checks: Checks) -> Loaded:
    """Parse and check a template; :class:`TemplateError` lists every problem found."""
    doc, spec = parse(text, source)
    problems: list[Problem] = []
    if isinstance(spec, AgentSpec):
        problems += check_agent(doc, spec, (), checks)
    else:
        for name, agent in spec.agents.items():
            if agent.name != name:
                where = ("agents", name, "name")
                problems.append(doc.problem(where, f"must be {name!r}, its key under 'agents'"))
            problems += check_agent(doc, agent, ("agents", name), checks)
        problems += check_workflow(doc, spec, checks)
    if problems:
        raise TemplateError(problems)
    document = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    digest = hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Loaded(spec, document, digest)


def _schema_ok(doc: Document, schema: dict[str, Any] | None, path: Path) -> list[Problem]:
    if schema is None:
        return []
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        return [doc.problem(path, f"not a valid JSON Schema: {str(exc).splitlines()[0]}")]
    return []


def check_tool(doc: Document, name: str, path: Path, checks: Checks) -> list[Problem]:
    if name not in checks.tools:
        known = ", ".join(sorted(checks.tools)) or "none"
        return [doc.problem(path, f"unknown tool {name!r} (installed: {known})")]
    if name not in checks.enabled:
        return [doc.problem(path, f"tool {name!r} is not enabled for this tenant")]
    return []


def check_agent(doc: Document, agent: AgentSpec, at: Path, checks: Checks) -> list[Problem]:
    problems: list[Problem] = []
    for i, tool in enumerate(agent.tools):
        problems += check_tool(doc, tool, (*at, "tools", i), checks)
    problems += _schema_ok(doc, agent.input_schema, (*at, "input_schema"))
    problems += _schema_ok(doc, agent.output_schema, (*at, "output_schema"))
    known = set(agent.variables) | {"input"}
    known |= set(((agent.input_schema or {}).get("properties") or {}).keys())
    for match in VAR.finditer(agent.instructions):
        root = match.group(1).split(".")[0]
        if root not in known:
            problems.append(doc.problem((*at, "instructions"), (
                f"{{{{ {match.group(1)} }}}} is neither a variable nor an input field"
                f" (known: {', '.join(sorted(known))})")))  # fmt: skip
    supports = checks.tool_calling(agent.model)
    if agent.tools and supports is False:
        problems.append(doc.problem((*at, "tools"), (
            f"the model route {agent.model!r} has a deployment without tool calling: an agent "
            "that lets the model choose tools needs one (use tool steps in a workflow instead)"
        )))  # fmt: skip
    return problems


@dataclass(slots=True)
class _Place:
    step: Step
    path: Path
    order: int


def _places(steps: list[Step], path: Path, out: dict[str, _Place]) -> None:
    for i, step in enumerate(steps):
        here = (*path, i)
        out.setdefault(step.id, _Place(step, here, len(out)))
        if step.branch is not None:
            _places(step.branch.then, (*here, "branch", "then"), out)
            _places(step.branch.else_, (*here, "branch", "else"), out)
        elif step.loop is not None:
            _places(step.loop.steps, (*here, "loop", "steps"), out)
        elif step.parallel is not None:
            for j, arm in enumerate(step.parallel):
                _places(arm, (*here, "parallel", j), out)


def _step_refs(step: Step) -> list[tuple[str, str, Any]]:
    """(field, reference, the value holding it) of the step itself (not nested steps)."""
    out: list[tuple[str, str, Any]] = []
    for name in ("input", "arguments"):
        out += _located(getattr(step, name), name)
    conds: list[tuple[str, Condition]] = []
    if step.branch is not None:
        conds.append(("branch.if.ref", step.branch.if_))
    if step.loop is not None and step.loop.until is not None:
        conds.append(("loop.until.ref", step.loop.until))
    for name, cond in conds:
        out.append((name, cond.ref.removeprefix("${").removesuffix("}"), None))
    if step.approval is not None:
        out += [("approval.question", r, None) for r in refs_in(step.approval.question)]
        out += [("approval.show", r, None) for r in refs_in(step.approval.show)]
    return out


def _located(value: Any, at: str) -> list[tuple[str, str, Any]]:
    """(dotted field, reference, value) for every reference inside ``value``."""
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in _located(v, f"{at}.{k}")]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in _located(v, f"{at}.{i}")]
    return [(at, ref, value) for ref in refs_in(value)]


def _path_of(name: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _agent_of(spec: WorkflowSpec, step: Step, checks: Checks) -> AgentSpec | None:
    if step.agent is None:
        return None
    return spec.agents.get(step.agent) or checks.agents.get(step.agent)


def _output_field_problem(
    spec: WorkflowSpec, target: Step, rest: list[str], checks: Checks
) -> str | None:
    """A reference into an agent's output that its output schema does not have."""
    agent = _agent_of(spec, target, checks)
    if agent is None or agent.output_schema is None or not rest:
        return None
    schema: Any = agent.output_schema
    for part in rest:
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict):
            return None
        if part not in props:
            return (f"steps.{target.id}.output has no field {part!r} (its output schema has: "
                    f"{', '.join(sorted(props)) or 'none'})")  # fmt: skip
        schema = props[part]
    return None


def check_workflow(doc: Document, spec: WorkflowSpec, checks: Checks) -> list[Problem]:
    problems: list[Problem] = []
    places: dict[str, _Place] = {}
    seen: set[str] = set()
    for step in walk(spec.steps):
        if step.id in seen:
            problems.append(doc.problem((), f"step id {step.id!r} is used twice"))
        seen.add(step.id)
    _places(spec.steps, ("steps",), places)
    graph: dict[str, set[str]] = {sid: set() for sid in places}
    for sid, place in places.items():
        step = place.step
        at = place.path
        if step.agent is not None and _agent_of(spec, step, checks) is None:
            problems.append(doc.problem((*at, "agent"), (
                f"unknown agent {step.agent!r} (define it under 'agents' or apply it first)"
            )))  # fmt: skip
        if step.tool is not None:
            problems += check_tool(doc, step.tool, (*at, "tool"), checks)
            tool = checks.tools.get(step.tool)
            if tool is not None and step.arguments is not None and not refs_in(step.arguments):
                for err in jsonschema_rs.validator_for(tool.parameters).iter_errors(
                    step.arguments
                ):
                    where = (*at, "arguments", *err.instance_path)
                    problems.append(doc.problem(where, f"does not fit the tool: {err.message}"))
        for name, ref, _value in _step_refs(step):
            where = (*at, *_path_of(name))
            parts = ref.split(".")
            if parts[0] not in ROOTS:
                problems.append(doc.problem(where, (
                    f"${{{ref}}}: a reference starts with input, steps or loop")))
                continue
            if parts[0] != "steps":
                continue
            if len(parts) < 2 or parts[1] not in places:
                problems.append(doc.problem(where, f"${{{ref}}}: no step {parts[1:2]}"))
                continue
            target = places[parts[1]]
            graph[sid].add(parts[1])
            if len(parts) > 2 and parts[2] != "output":
                problems.append(doc.problem(where, f"${{{ref}}}: only a step's 'output' is kept"))
                continue
            wrong = _output_field_problem(spec, target.step, parts[3:], checks)
            if wrong:
                problems.append(doc.problem(where, f"${{{ref}}}: {wrong}"))
    problems += _order_problems(doc, places, graph)
    for ref in refs_in(spec.output):
        parts = ref.split(".")
        if parts[0] == "steps" and (len(parts) < 2 or parts[1] not in places):
            problems.append(doc.problem(("output",), f"${{{ref}}}: no step {parts[1:2]}"))
    return problems


def _order_problems(
    doc: Document, places: dict[str, _Place], graph: dict[str, set[str]]
) -> list[Problem]:
    """References to a step that runs later: a cycle when it refers back, else an error.

    A step inside a loop may read its own loop's later steps (the previous iteration), and
    a compound step (branch, loop, parallel) may read what it contains.
    """
    problems: list[Problem] = []
    for sid, targets in graph.items():
        here = places[sid]
        for target in sorted(targets):
            there = places[target]
            inside = there.path[: len(here.path)] == here.path  # nested in the referrer
            same_loop = _common_loop(here.path, there.path)
            if there.order < here.order or inside or same_loop or (target == sid and same_loop):
                continue
            cycle = _cycle(graph, target, sid)
            if cycle:
                message = "a cycle: " + " -> ".join([sid, *cycle])
            else:
                message = f"refers to step {target!r}, which runs after it"
            problems.append(doc.problem(here.path, message))
    return problems


def _common_loop(a: Path, b: Path) -> bool:
    for end in range(min(len(a), len(b)), 0, -1):
        if a[:end] == b[:end] and "loop" in a[:end]:
            return True
    return False


def _cycle(graph: dict[str, set[str]], start: str, goal: str) -> list[str]:
    """A path start -> ... -> goal in the reference graph, if any."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack += [(n, [*path, n]) for n in graph.get(node, ())]
    return []


__all__ = ["REF", "Checks", "Document", "Loaded", "Problem", "TemplateError", "load", "parse"]
