"""The Alembic migrations create exactly the tables the ORM models describe.

Several features add tables (feedback, reviews, …); a model changed without its
migration works in tests that create tables from the models but fails on a real upgrade.
This compares the migrated schema with the models' metadata, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import iatros
from iatros.store.db import Database, database_url
from iatros.store.models import Base


def _import_all_models() -> None:
    """Every module that declares ORM models registers them on ``Base.metadata``."""
    for info in pkgutil.walk_packages(iatros.__path__, "iatros."):
        if info.name.endswith(("models", "feedback")) and ".migrations" not in info.name:
            importlib.import_module(info.name)


def _differences(url: str) -> list[Any]:
    _import_all_models()
    db = Database(url)
    try:
        db.upgrade()
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        db.close()
    # Index names and server defaults are the migration's business; tables and columns
    # are what code relies on.
    return [d for d in diffs if isinstance(d, tuple) and d[0] in ("add_table", "remove_table",
            "add_column", "remove_column")]  # fmt: skip


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    assert _differences(database_url(None, tmp_path)) == []


def test_postgresql_schema_matches_the_models(db_url: str) -> None:
    assert _differences(db_url) == []
