"""References between steps (``${steps.triage.output.urgency}``) and ``{{ variables }}``.

No expression language: a reference is a dotted path into the run's data, and a
condition compares one reference with a value. A template is untrusted input (a tenant
writes it), so nothing in it is ever evaluated as code.

- ``${input.x}`` — the run's input; ``${steps.<id>.output.y}`` — a step's output (for a
  step in a loop, its latest iteration); ``${loop.index}`` — the iteration, from 0.
- A string that is exactly one reference takes the referenced value (any JSON type);
  references inside a longer string are rendered as text (JSON for objects).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from iatros.agents.spec import Condition

REF = re.compile(r"\$\{\s*([A-Za-z0-9_.\-\[\]]+)\s*\}")
VAR = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
ROOTS = ("input", "steps", "loop")


class MissingValue(Exception):
    """A reference to data a run does not have (a step that was skipped, a missing field)."""


def refs_in(value: Any) -> list[str]:
    """Every reference in a value (strings, lists, objects, nested)."""
    if isinstance(value, str):
        return [m.group(1) for m in REF.finditer(value)]
    if isinstance(value, list):
        return [r for v in value for r in refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    return []


def lookup(data: dict[str, Any], ref: str) -> Any:
    """The value at a dotted path (list indexes as ``.0``)."""
    node: Any = data
    for part in ref.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise MissingValue(f"${{{ref}}} has no value in this run ('{part}' is missing)")
    return node


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def resolve(value: Any, data: dict[str, Any]) -> Any:
    """``value`` with its references replaced by the run's data."""
    if isinstance(value, str):
        whole = REF.fullmatch(value.strip())
        if whole is not None:
            return lookup(data, whole.group(1))
        return REF.sub(lambda m: _text(lookup(data, m.group(1))), value)
    if isinstance(value, list):
        return [resolve(v, data) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, data) for k, v in value.items()}
    return value


def render(text: str, variables: dict[str, Any]) -> str:
    """``{{ name }}`` replaced by a variable (dotted paths into objects allowed)."""

    def one(match: re.Match[str]) -> str:
        try:
            return _text(lookup(variables, match.group(1)))
        except MissingValue:
            raise MissingValue(f"{{{{ {match.group(1)} }}}} has no value") from None

    return VAR.sub(one, text)


def holds(cond: Condition, data: dict[str, Any]) -> bool:
    """Whether a condition holds; a missing reference is ``None`` (so ``falsy`` holds)."""
    try:
        left = lookup(data, cond.ref.removeprefix("${").removesuffix("}"))
    except MissingValue:
        left = None
    op, right = cond.op, cond.value
    if op == "equals":
        return bool(left == right)
    if op == "not_equals":
        return bool(left != right)
    if op in ("in", "not_in"):
        found = isinstance(right, list) and left in right
        return found if op == "in" else not found
    if op == "truthy":
        return bool(left)
    if op == "falsy":
        return not left
    try:
        if op == "gt":
            return bool(left > right)
        if op == "gte":
            return bool(left >= right)
        if op == "lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False
