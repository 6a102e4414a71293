"""The ``iatros`` command: serve, chat, models."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.table import Table

from iatros.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="Iatros: a self-hosted AI gateway for clinical assistants.", no_args_is_help=True
)
err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console() if sys.stdout.isatty() else Console(width=220)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (or IATROS_CONFIG).")
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="A running Iatros server (or IATROS_URL). Without it: in-process."),
]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="API key (or IATROS_API_KEY).", envvar="IATROS_API_KEY")
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides or None)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the OpenAI-compatible API."""
    import uvicorn

    if config is not None:
        os.environ["IATROS_CONFIG"] = str(config)
    if host is not None:
        os.environ["IATROS_SERVER__HOST"] = host
    if port is not None:
        os.environ["IATROS_SERVER__PORT"] = str(port)
    if workers is not None:
        os.environ["IATROS_SERVER__WORKERS"] = str(workers)
    settings = _settings(None)  # validate before forking workers
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("IATROS_DATA_DIR", str(settings.data_dir))
    count = settings.server.worker_count
    if count > 1:
        _prepare_multiprocess_metrics(settings.data_dir / "prometheus")
    err.print(
        f"Iatros serving on http://{settings.server.host}:{settings.server.port} "
        f"(docs at /docs, {count} worker(s))"
    )
    uvicorn.run(
        "iatros.api.app:app_from_env",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=count,
        loop="uvloop",
        http="iatros.api.protocol:HttpProtocol",  # httptools, one write per response
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        backlog=4096,
    )


def _prepare_multiprocess_metrics(directory: Path) -> None:
    """An empty directory for the workers' metric files (see observability.metrics)."""
    from iatros.observability.tally import MULTIPROC_ENV

    if directory.exists():
        for stale in directory.glob("*.db"):
            stale.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def _client(url: str, key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(300, connect=5)
    )


def _fail_http(resp: httpx.Response) -> None:
    try:
        message = resp.json()["error"]["message"]
    except Exception:
        message = resp.text[:300]
    err.print(f"[red]error {resp.status_code}:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def chat(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")] = "assistant",
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ask a question and stream the answer to the terminal."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if max_tokens:
        body["max_tokens"] = max_tokens
    url = url or os.environ.get("IATROS_URL")
    if url:
        with (
            _client(url, key) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            if resp.status_code != 200:
                resp.read()
                _fail_http(resp)
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = orjson.loads(line[6:])
                if "error" in data:
                    err.print(f"\n[red]error:[/red] {data['error']['message']}")
                    raise typer.Exit(1)
                for choice in data.get("choices", []):
                    sys.stdout.write(choice["delta"].get("content") or "")
                    sys.stdout.flush()
        sys.stdout.write("\n")
        return
    asyncio.run(_chat_in_process(_settings(config), body))


async def _chat_in_process(settings: Settings, body: dict[str, Any]) -> None:
    """Drive the gateway directly, without HTTP: the same pipeline the server runs."""
    from iatros.auth import ANONYMOUS
    from iatros.errors import GatewayError
    from iatros.gateway import Gateway, RequestContext
    from iatros.observability.logging import configure_logging
    from iatros.providers.base import ChatCall

    configure_logging("warning")
    os.environ.setdefault("IATROS_DATA_DIR", str(settings.data_dir))
    gateway = Gateway.from_settings(settings)
    await gateway.start()
    try:
        ctx = RequestContext(principal=ANONYMOUS, endpoint="cli")
        call = ChatCall(messages=body["messages"], max_tokens=body.get("max_tokens"))
        plan = gateway.plan(ctx, body["model"], call)
        first, deltas = await gateway.open_stream(ctx, plan, call)
        for delta in [first] if first is not None else []:
            sys.stdout.write(delta.delta.get("content") or "")
        async for delta in deltas:
            sys.stdout.write(delta.delta.get("content") or "")
            sys.stdout.flush()
        sys.stdout.write("\n")
    except GatewayError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    finally:
        await gateway.close()


@app.command()
def models(url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None) -> None:
    """List the models clients can ask for."""
    table = Table("model", "kind", "served by")
    url = url or os.environ.get("IATROS_URL")
    if url:
        with _client(url, key) as client:
            resp = client.get("/v1/models")
            if resp.status_code != 200:
                _fail_http(resp)
            for item in resp.json()["data"]:
                table.add_row(item["id"], "", item["owned_by"])
    else:
        settings = _settings(config)
        for name, route in settings.models.items():
            table.add_row(name, "chat", " → ".join(route.deployments))
        for name, dep in settings.deployments.items():
            table.add_row(name, dep.kind, f"{dep.provider}:{dep.model}")
    out.print(table)


if __name__ == "__main__":
    app()


# -- governance: keys, tenants, database, audit ----------------------------------------

keys_app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their limits.", no_args_is_help=True)
db_app = typer.Typer(
    help="The database (SQLite by default, PostgreSQL with IATROS_DATABASE_URL).",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")


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


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


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


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursively).")],
    collection: Annotated[str, typer.Option("--collection", help="Collection to add to.")],
    tenant: Annotated[str, typer.Option(help="Tenant owning the collection.")] = "default",
    config: ConfigOpt = None,
) -> None:
    """Ingest documents into a knowledge collection (PDF, DOCX, HTML, Markdown, text).

    Runs in-process on the data directory: stop the server first, or upload through
    POST /v1/knowledge/collections/{name}/documents while it runs.
    """
    settings = _settings(config)
    os.environ.setdefault("IATROS_DATA_DIR", str(settings.data_dir))
    asyncio.run(_ingest(settings, tenant, collection, paths))


async def _ingest(settings: Settings, tenant: str, collection: str, paths: list[Path]) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from iatros.gateway import Gateway
    from iatros.knowledge import FileReport, KnowledgeBase, KnowledgeError
    from iatros.observability.logging import configure_logging

    configure_logging("warning")
    name = settings.embeddings.default_model
    if name is None:
        _fail("no embedding model is configured (embeddings.default_model)")
    gateway = Gateway.from_settings(settings)
    deployment = gateway.deployments[str(name)]
    await deployment.provider.start()

    async def embed(texts: list[str]) -> list[list[float]]:
        return (await deployment.provider.embed(deployment.config, texts)).vectors

    kb = KnowledgeBase(settings.knowledge, settings.data_dir, embed)
    await kb.start()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("ingesting", total=None)

            def on_progress(done: int, total: int, report: FileReport | None) -> None:
                label = report.filename[-40:] if report is not None else "ingesting"
                progress.update(task, completed=done, total=total, description=label)

            try:
                report = await kb.ingest_paths(tenant, collection, paths, on_progress)
            except KnowledgeError as exc:
                _fail(str(exc))
    finally:
        await kb.close()
        await deployment.provider.close()
    summary = report.to_dict()
    out.print(
        f"files {summary['files']}, indexed {summary['indexed']}, chunks {summary['chunks']}, "
        f"skipped {summary['skipped']}, errors {len(report.errors)} "
        f"({summary.get('seconds', 0):.1f} s)"
    )
    for failed in report.errors:
        err.print(f"[red]error:[/red] {failed.filename}: {failed.error}")
    if report.errors:
        raise typer.Exit(1)
