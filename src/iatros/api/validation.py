"""Input checks at the API boundary: text that can be stored, numbers that fit.

Why one module: a value that reaches storage must be storable there, whichever
endpoint it came through. PostgreSQL refuses NUL in text and integers beyond 64
bits (``bigint``; ``integer`` columns stop at 32 bits), and a refusal *after* the
request was answered is worse than a 400: the request's usage or audit record is
already journaled and would fail to store. So each kind of value gets one rule,
used both as a pydantic type (bodies) and as a plain function (query and path
parameters, checked inside the handler so that authentication still comes first):

- **identifiers** (model, deployment, tenant, key, collection, patient ids, cache
  filters): no control character (C0, DEL, C1) and no line or paragraph separator,
  bounded length;
- **free text** stored as is (feedback comments, key names): no C0 control
  character but tab, newline and carriage return;
- **message content and other model input** (chat messages, embedding inputs,
  search queries, stop sequences): no NUL, nothing else refused. Content may hold
  any other control character pasted from a PDF or a terminal (form feeds, escapes):
  models take them, and refusing them would break clients that worked. NUL is
  refused because it is never meaningful text, PostgreSQL cannot store it (a
  grounded answer, a transcript or a logged prompt with ``log_content`` on may be
  kept), and C-string based model runtimes would see a silently truncated prompt;
- **integers** that reach JSON encoders (orjson stops at 64 bits) or SQL: signed
  64-bit, checked everywhere in passed-through JSON too (``logit_bias``, tools, ...).

Every failure is an :class:`~iatros.errors.InvalidRequest` (400) naming ``param``. The
rules are published in the OpenAPI document too (``pattern``, ``maximum``), so generated
clients and contract tests know them: query and path parameters declare them with
:func:`identifier_query`, :func:`identifier_path` and :func:`int64_query` (FastAPI then
refuses a bad value before the handler runs, with a 400 naming the parameter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from iatros.errors import InvalidRequest

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
"""Columns of type ``integer`` (limits per key and tenant) hold at most this."""

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
"""Accepted time range for query windows: wide enough for any usage record, and far
enough from ``datetime.min``/``max`` that the dashboard's arithmetic around them (a day
back, the next bucket, a UTC offset) cannot overflow."""

IDENTIFIER_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$"
FREE_TEXT_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f]*$"
MODEL_INPUT_PATTERN = r"^[^\u0000]*$"
"""The rules as JSON Schema patterns (for the OpenAPI document; unpaired surrogates, also
refused, cannot arrive in JSON or in a URL)."""

_IDENTIFIER_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_TEXT_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Documented:
    """Adds a ``pattern`` to a string's JSON schema (the validator enforces it, with a
    clearer message than a pattern mismatch would give)."""

    pattern: str

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["pattern"] = self.pattern
        return schema


# -- rules (raise ValueError: pydantic turns it into a 400 naming the field) ---------------


def _identifier(value: str) -> str:
    if _IDENTIFIER_BAD.search(value):
        raise ValueError("must not contain control characters or line separators")
    return value


def _free_text(value: str) -> str:
    if _TEXT_CONTROLS.search(value):
        raise ValueError(
            "must not contain control characters (other than tab, newline, carriage return)"
        )
    return value


def check_model_input(value: str) -> str:
    """Model input: anything but NUL (and unpaired surrogates); raises ``ValueError``."""
    if _NUL_OR_SURROGATE.search(value):
        raise ValueError("must not contain NUL characters (\\u0000) or unpaired surrogates")
    return value


Identifier = Annotated[str, AfterValidator(_identifier), Documented(IDENTIFIER_PATTERN)]
"""Names and ids: no control character, no line separator."""
FreeText = Annotated[str, AfterValidator(_free_text), Documented(FREE_TEXT_PATTERN)]
"""Text stored as written: tab, newline and carriage return are the only controls allowed."""
ModelInput = Annotated[str, AfterValidator(check_model_input), Documented(MODEL_INPUT_PATTERN)]
"""Text for a model: anything but NUL (and unpaired surrogates, which no encoder takes)."""
NulFree = Annotated[str, Documented(MODEL_INPUT_PATTERN)]
"""Documents the model-input rule on a union member; a field validator enforces it (so
that the error names the rule, not the union member that failed)."""


# -- the same rules for query and path parameters ------------------------------------------


def identifier_query(max_length: int = 128, **kw: Any) -> Any:
    """``Query(...)`` for an identifier: ``Annotated[str | None, identifier_query(64)]``."""
    return Query(max_length=max_length, pattern=IDENTIFIER_PATTERN, **kw)


def identifier_path(max_length: int = 128) -> Any:
    """``Path(...)`` for an identifier in the URL path."""
    return Path(max_length=max_length, pattern=IDENTIFIER_PATTERN)


TIMESTAMP_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?$"
)
"""An ISO 8601 date or date-time (what :func:`timestamp` reads)."""


def timestamp_query(**kw: Any) -> Any:
    """``Query(...)`` for a time window's end: ``Annotated[str | None, timestamp_query()]``."""
    return Query(pattern=TIMESTAMP_PATTERN, description="ISO 8601, UTC unless offset", **kw)


def int64_query(**kw: Any) -> Any:
    """``Query(...)`` for an integer compared with a ``bigint`` column."""
    return Query(ge=INT64_MIN, le=INT64_MAX, **kw)


def timestamp(value: str | None, param: str) -> datetime | None:
    """An ISO date or date-time as an aware UTC datetime within ``EARLIEST``..``LATEST``.

    A naive value is taken as UTC; a trailing ``Z`` is accepted (``fromisoformat`` of
    Python 3.11 takes it, older clients' habits too).
    """
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{param} must be an ISO date or date-time (2025-01-31T08:00:00Z)", param=param
        ) from None
    out_of_range = InvalidRequest(
        f"{param} must be between {EARLIEST.date()} and {LATEST.date()}", param=param
    )
    try:
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before datetime.min in UTC
        raise out_of_range from None
    if not EARLIEST <= parsed <= LATEST:
        raise out_of_range
    return parsed


# -- passed-through JSON --------------------------------------------------------------------


def check_json(value: Any, param: str) -> None:
    """Refuse integers beyond 64 bits anywhere in a passed-through JSON value.

    Fields the gateway does not interpret (``logit_bias``, ``tools``,
    ``response_format``, ...) are forwarded to the model as JSON; orjson cannot encode
    an integer beyond 64 bits, so such a request would fail after admission with a
    500. The walk is iterative: nesting depth is whatever the JSON parser allowed.
    """
    stack: list[tuple[Any, str]] = [(value, param)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not INT64_MIN <= item <= INT64_MAX:
                raise InvalidRequest(
                    f"Invalid '{path}': integers must be between {INT64_MIN} and {INT64_MAX}",
                    param=path,
                )
        elif isinstance(item, Mapping):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}.{i}") for i, v in enumerate(item))
