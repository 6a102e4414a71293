"""Tracebacks that are safe to log: database errors lose the values they quote.

A failing statement's exception carries data: SQLAlchemy appends the bound
parameters (switched off by ``hide_parameters`` on every engine, see
:mod:`iatros.store.db`), and the driver's own message may quote the row itself
(PostgreSQL's ``DETAIL:  Failing row contains (..., 'Patient Jeanne ...', ...)``,
``Key (request_id)=(...) already exists``, ``invalid input syntax for type integer:
"..."``). Logs must never hold patient data, so the log formatter renders every
exception through :func:`format_exception`: database errors (SQLAlchemy, psycopg,
sqlite3) keep their class, the first line of their message with quoted values
masked, and the SQL statement (placeholders only, the gateway always binds values);
``DETAIL``, ``HINT`` and ``CONTEXT`` lines and parameters are dropped. Other
exceptions are rendered as :mod:`traceback` does.
"""

from __future__ import annotations

import re
import traceback
from types import TracebackType

_DB_PACKAGES = frozenset({"sqlalchemy", "psycopg", "psycopg2", "sqlite3", "_sqlite3", "asyncpg"})
_QUOTED_VALUE = re.compile(r"""(:\s*)("[^"]*"|'[^']*'|\([^)]*\))""")
_MAX_SQL = 500
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def is_database_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".", 1)[0] in _DB_PACKAGES


def safe_message(exc: BaseException) -> str:
    """The exception's message, with what a database error may quote removed."""
    if not is_database_error(exc):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    first = _QUOTED_VALUE.sub(lambda m: f"{m.group(1)}<value>", first)
    statement = getattr(exc, "statement", None)
    if isinstance(statement, str):
        sql = " ".join(statement.split())
        if len(sql) > _MAX_SQL:
            sql = sql[:_MAX_SQL] + "..."
        first += f" [SQL: {sql}]"
    sqlstate = getattr(exc, "sqlstate", None) or getattr(
        getattr(exc, "orig", None), "sqlstate", None
    )
    if isinstance(sqlstate, str):
        first += f" [SQLSTATE {sqlstate}]"
    return first


def format_exception(exc_info: ExcInfo) -> str:
    """Like ``logging.Formatter.formatException``, with :func:`safe_message` for messages."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    exc: BaseException | None = exc_info[1]
    link: str | None = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append((exc, link))
        if exc.__cause__ is not None:
            exc, link = exc.__cause__, _CAUSE
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc, link = exc.__context__, _CONTEXT
        else:
            exc = None
    parts: list[str] = []
    for exc, link in reversed(chain):
        lines = []
        if exc.__traceback__ is not None:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_tb(exc.__traceback__))
        kind = type(exc)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        message = safe_message(exc)
        lines.append(f"{name}: {message}\n" if message else f"{name}\n")
        parts.append("".join(lines))
        if link is not None:
            parts.append(f"\n{link}\n\n")
    return "".join(parts).rstrip("\n")
