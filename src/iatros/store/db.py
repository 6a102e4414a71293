"""Engine, sessions, migrations, and the one place where tenant isolation is enforced.

Sessions are opened for a tenant (or for the platform, which sees every tenant).
A ``do_orm_execute`` hook adds ``tenant_id = <session tenant>`` to every ORM
SELECT, UPDATE and DELETE touching a :class:`TenantScoped` model, and a
``before_flush`` hook refuses to write a row of another tenant. Handlers cannot
forget the filter because they never write it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker, with_loader_criteria

from iatros.store.models import TenantScoped

PLATFORM = "*"
"""The tenant of platform-wide sessions (the bootstrap admin, the CLI)."""


class TenantViolation(Exception):
    """Code tried to write a row for another tenant than its session's."""


def database_url(explicit: str | None, data_dir: Path) -> str:
    if explicit:
        url = explicit
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'iatros.db').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine that never puts bound parameters into its errors or logs.

    ``hide_parameters``: a failing statement's exception (logged with its traceback)
    would otherwise quote every value it bound: feedback comments, patient references.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Take the write lock up front: a read-then-write transaction could otherwise
            # deadlock with another writer (SQLite cannot upgrade a shared lock safely).
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url, pool_size=5, max_overflow=10, pool_pre_ping=True, hide_parameters=True
    )


_VALUE_ERRORS = (TypeError, ValueError, OverflowError, KeyError)
"""Raised while rows are built or values bound (``UnicodeError`` is a ``ValueError``)."""


def is_data_error(exc: BaseException) -> bool:
    """Whether a write failed because of the values written, so that retrying cannot help.

    The records' fault: ``DataError`` (a value the column cannot hold: NUL in PostgreSQL
    text, a number out of range, text too long), ``IntegrityError`` (a constraint), and
    Python errors raised while rows are built or values bound (``TypeError``,
    ``ValueError``, ``OverflowError``, ``KeyError``), raw or wrapped in a
    ``StatementError``. The store's fault, worth retrying later: ``OperationalError``
    (connection lost, database locked), ``InterfaceError``, ``ProgrammingError`` (a
    table missing after a failed migration), ``InternalError``, pool timeouts.
    """
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return False
    if isinstance(exc, sa_exc.StatementError):
        return exc.orig is not None and is_data_error(exc.orig)
    return isinstance(exc, _VALUE_ERRORS)


@event.listens_for(Session, "do_orm_execute")
def _scope_queries(state: ORMExecuteState) -> None:
    tenant = state.session.info.get("tenant")
    if tenant is None:
        raise TenantViolation("session opened without a tenant")
    if tenant == PLATFORM or not (state.is_select or state.is_update or state.is_delete):
        return
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantScoped,
            lambda cls: cls.tenant_id == tenant,
            include_aliases=True,
        )
    )


@event.listens_for(Session, "before_flush")
def _check_writes(session: Session, _ctx: Any, _instances: Any) -> None:
    tenant = session.info.get("tenant")
    if tenant == PLATFORM:
        return
    for obj in list(session.new) + list(session.dirty) + list(session.deleted):
        if isinstance(obj, TenantScoped) and obj.tenant_id != tenant:
            raise TenantViolation(f"a {type(obj).__name__} of another tenant cannot be written")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrated = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self, tenant: str) -> Iterator[Session]:
        """A transaction seeing only ``tenant``'s rows (``PLATFORM`` sees all)."""
        with self._sessions() as session, session.begin():
            session.info["tenant"] = tenant
            yield session

    def upgrade(self) -> None:
        """Run Alembic migrations to head (serialised across processes on PostgreSQL)."""
        with self._lock:
            if self._migrated:
                return
            cfg = AlembicConfig()
            cfg.set_main_option(
                "script_location", str(files("iatros.store").joinpath("migrations"))
            )
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(7312001)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            self._migrated = True

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.engine.dispose()
