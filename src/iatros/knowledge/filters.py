"""Search filters: validated once, then rendered for SQLite or for a backend's payload.

A filter maps a field to a value, a list of values, or for numbers a range
(``{"gte": 2, "lte": 5}``). Fields are document fields (``document_id``, ``document``,
``content_type``), chunk fields (``page``, ``section``) or keys of the metadata given at
ingestion. Checking them here, apart from any engine, gives the same 400 for the same
mistake whichever backend answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from iatros.knowledge.types import InvalidFilter

Scalar = str | int | float | bool | None
FIELDS = ("document_id", "document", "content_type", "page", "section")
"""Built-in fields; any other valid key is looked up in the document's metadata."""
RANGE_OPS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SQL_COLUMNS = {
    "document_id": "d.id",
    "document": "d.name",
    "content_type": "d.content_type",
    "page": "c.page",
    "section": "c.section",
}


@dataclass(frozen=True, slots=True)
class Condition:
    """One checked filter: ``field`` equals one of ``values``, is null, or is in a range."""

    field: str
    metadata: bool
    kind: Literal["values", "null", "range"]
    values: tuple[Scalar, ...] = ()
    ranges: tuple[tuple[str, float], ...] = ()


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def parse_filters(filters: dict[str, Any]) -> list[Condition]:
    """Check ``filters``; raises :class:`InvalidFilter` naming the bad field."""
    out: list[Condition] = []
    for field, value in filters.items():
        if not isinstance(field, str) or not field:
            raise InvalidFilter("filter keys must be non-empty strings")
        if field in FIELDS:
            metadata = False
        elif _META_KEY.match(field):
            metadata = True
        else:
            raise InvalidFilter(f"unusable filter field {field!r}")
        if isinstance(value, dict):
            if not value or any(op not in RANGE_OPS for op in value):
                raise InvalidFilter(f"filter {field!r}: ranges use gte, gt, lte, lt")
            for op, bound in value.items():
                if not isinstance(bound, int | float) or isinstance(bound, bool):
                    raise InvalidFilter(f"filter {field!r}: {op} needs a number")
            ranges = tuple((op, float(bound)) for op, bound in value.items())
            out.append(Condition(field, metadata, "range", ranges=ranges))
        elif isinstance(value, list | tuple):
            if not value or not all(_scalar(v) for v in value):
                raise InvalidFilter(f"filter {field!r}: a non-empty list of plain values")
            out.append(Condition(field, metadata, "values", values=tuple(value)))
        elif value is None:
            out.append(Condition(field, metadata, "null"))
        elif _scalar(value):
            out.append(Condition(field, metadata, "values", values=(value,)))
        else:
            raise InvalidFilter(f"filter {field!r}: unsupported value {value!r}")
    return out


def sql_where(conditions: list[Condition]) -> tuple[list[str], list[Any]]:
    """SQL terms over ``documents d`` and ``chunks c`` (metadata through ``json_extract``)."""
    where: list[str] = []
    params: list[Any] = []
    for cond in conditions:
        prefix: list[Any] = []
        if cond.metadata:
            column = "json_extract(d.metadata, ?)"
            prefix = [f'$."{cond.field}"']
        else:
            column = _SQL_COLUMNS[cond.field]
        if cond.kind == "range":
            for op, bound in cond.ranges:
                where.append(f"{column} {RANGE_OPS[op]} ?")
                params.extend([*prefix, bound])
        elif cond.kind == "null":
            where.append(f"{column} IS NULL")
            params.extend(prefix)
        elif len(cond.values) == 1:
            where.append(f"{column} = ?")
            params.extend([*prefix, cond.values[0]])
        else:
            where.append(f"{column} IN ({', '.join('?' * len(cond.values))})")
            params.extend([*prefix, *cond.values])
    return where, params
