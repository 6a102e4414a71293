"""The ``iatros`` administration commands: keys, tenants, database, audit trail.

They work on the store directly (the server may run meanwhile: key changes reach it at
once), with the same key store and keyed audit chain the server uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from iatros.cli_common import ConfigOpt, _fail, _settings, err, out
from iatros.config import Settings

keys_app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their limits.", no_args_is_help=True)
db_app = typer.Typer(
    help="The database (SQLite by default, PostgreSQL with IATROS_DATABASE_URL).",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)


def _database(config: Path | None) -> Any:
    return _open_database(_settings(config))


def _open_database(settings: Settings) -> Any:
    from iatros.store.db import Database, database_url

    db = Database(database_url(settings.database_url, settings.data_dir))
    try:
        db.upgrade()
    except Exception as exc:
        err.print(f"[red]error:[/red] cannot open the database: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None
    return db


def _keystore(config: Path | None) -> Any:
    """Keys as the server sees them: audited into the keyed chain, changes announced."""
    from iatros.governance.audit import open_chain
    from iatros.governance.keycache import touch_version
    from iatros.governance.keys import KeyStore

    # The server logs it when it generates the secret key; here it would come before the
    # command's own output (``iatros audit verify`` says where the key comes from).
    logging.getLogger("iatros.governance.secrets").addHandler(logging.NullHandler())
    settings = _settings(config)
    db = _open_database(settings)
    sqlite = db.engine.dialect.name == "sqlite"  # PostgreSQL: NOTIFY in the transaction
    return KeyStore(
        db,
        open_chain(settings, db),
        on_change=(lambda: touch_version(settings.data_dir)) if sqlite else None,
    )


def _parse_date(value: str | None) -> Any:
    if value is None:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--expires must be a date like 2027-01-31, not {value!r}")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to (created if new).")],
    role: Annotated[str, typer.Option(help="admin, clinician, service or auditor.")],
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(help="Monthly budget in EUR.")] = None,
    expires: Annotated[str | None, typer.Option(help="Expiry date (YYYY-MM-DD).")] = None,
    capability: Annotated[
        list[str] | None,
        typer.Option(help="A capability beside the role (reviewer); repeat for several."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key. It is printed once: only its hash is stored."""
    try:
        token, info = _keystore(config).create(
            tenant=tenant,
            role=role,
            actor="cli",
            name=name,
            rpm=rpm,
            tpm=tpm,
            budget_eur=budget,
            expires_at=_parse_date(expires),
            capabilities=capability or [],
        )
    except ValueError as exc:
        _fail(str(exc))
    err.print(f"created {info.id} for tenant {info.tenant} (role {info.role}); store it now:")
    print(token)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    config: ConfigOpt = None,
) -> None:
    """List keys (prefixes only)."""
    from iatros.store.db import PLATFORM

    table = Table(
        "id", "tenant", "role", "prefix", "name", "rpm", "tpm", "budget", "expires", "revoked"
    )
    for k in _keystore(config).list(PLATFORM, tenant):
        table.add_row(
            k.id,
            k.tenant,
            k.role,
            k.prefix + "…",
            k.name,
            str(k.rpm or ""),
            str(k.tpm or ""),
            "" if k.budget_eur is None else f"{k.budget_eur:.2f}",
            (k.expires_at or "")[:10],
            (k.revoked_at or "")[:19],
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Revoke a key (every server refuses it from its next request)."""
    from iatros.store.db import PLATFORM

    try:
        info = _keystore(config).revoke(key_id, scope=PLATFORM, actor="cli")
    except LookupError:
        _fail(f"no key {key_id!r}", 1)
    err.print(f"revoked {info.id}")


@keys_app.command("rotate")
def keys_rotate(key_id: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Replace a key by a new one with the same tenant, role and limits."""
    from iatros.store.db import PLATFORM

    try:
        token, info = _keystore(config).rotate(key_id, scope=PLATFORM, actor="cli")
    except LookupError:
        _fail(f"no key {key_id!r}", 1)
    except ValueError as exc:
        _fail(str(exc), 1)
    err.print(f"rotated {key_id} -> {info.id}; store the new key now:")
    print(token)


@tenants_app.command("set")
def tenants_set(
    tenant: Annotated[str, typer.Argument()],
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute for the whole tenant.")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute for the whole tenant.")] = None,
    budget: Annotated[float | None, typer.Option(help="Monthly budget in EUR.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Set a tenant's limits (created if new)."""
    try:
        _keystore(config).set_tenant_limits(
            tenant, rpm=rpm, tpm=tpm, budget_eur=budget, actor="cli"
        )
    except ValueError as exc:
        _fail(str(exc))
    err.print(f"tenant {tenant}: rpm={rpm} tpm={tpm} budget={budget}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply the database migrations (the server also does it at start)."""
    db = _database(config)
    err.print(f"database is up to date ({db.engine.dialect.name})")


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None) -> None:
    """Recompute the audit chain with the secret key(s) and check it against the anchors.

    Exit 1 naming the first record that does not hold; exit 2 when there is nothing to
    verify against (no database configured, no secret key).
    """
    from iatros.governance.anchors import AnchorReadError, read_anchors
    from iatros.governance.audit import anchor_path, verify
    from iatros.governance.secrets import SECRET_FILE, Keyring

    settings = _settings(config)
    sqlite_file = settings.data_dir / "iatros.db"
    if settings.database_url is None and not sqlite_file.exists():
        _fail(
            f"no database to verify: IATROS_DATABASE_URL is not set and {sqlite_file} does "
            "not exist (set IATROS_DATABASE_URL, or IATROS_DATA_DIR to the server's data "
            "directory)"
        )
    configured = settings.secret_key.get_secret_value() if settings.secret_key else None
    if configured is None and not (settings.data_dir / SECRET_FILE).exists():
        _fail(
            f"no secret key: IATROS_SECRET_KEY is not set and {settings.data_dir / SECRET_FILE} "
            "does not exist; the keyed audit chain cannot be checked without it"
        )
    old = settings.secret_keys_old.get_secret_value() if settings.secret_keys_old else None
    keyring = Keyring.load(configured, old, settings.data_dir)
    path = anchor_path(settings)
    try:
        anchors = read_anchors(path)
    except AnchorReadError as exc:
        err.print(f"[red]audit chain broken:[/red] the anchor file was damaged: {exc}")
        raise typer.Exit(1) from None
    result = verify(_open_database(settings), keyring, anchors)
    if not result.ok:
        err.print(f"[red]audit chain broken:[/red] {result.reason}")
        raise typer.Exit(1)
    keyed = ", ".join(f"{n} keyed with {kid}" for kid, n in sorted(result.keys.items()))
    out.print(
        f"audit chain intact: {result.checked} records ({keyed or '0 keyed'}; "
        f"{result.unkeyed} unkeyed; {result.anchors} anchors matched"
        + (f", newest at record {result.newest_anchor})" if result.newest_anchor else ")")
    )
    if result.unkeyed:
        err.print(
            f"note: {result.unkeyed} records predate the keyed chain (plain hashes): anyone "
            "who can write the database could have rewritten them unless an anchor follows them"
        )
    if not anchors:
        err.print(f"note: no anchors in {path}: removing the newest records would go unnoticed")
    if keyring.generated:
        err.print(
            f"note: the secret key is the generated {settings.data_dir / SECRET_FILE}: whoever "
            "can read it and write the database could rewrite the trail (set IATROS_SECRET_KEY)"
        )
