"""The ``iatros`` command: serve, chat, models, ingest (administration: ``cli_admin``)."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.table import Table

from iatros.cli_admin import audit_app, db_app, keys_app, tenants_app
from iatros.cli_agents import agents_app, plugins_app
from iatros.cli_alerts import alerts_app
from iatros.cli_common import ConfigOpt, KeyOpt, UrlOpt, _fail, _settings, err, out
from iatros.cli_experiments import experiments_app, releases_app, rollouts_app
from iatros.cli_radiographs import radiographs_app
from iatros.cli_reviews import reviews_app
from iatros.cli_scribe import scribe_app
from iatros.cli_worker import jobs_app, worker
from iatros.config import Settings

app = typer.Typer(
    help="Iatros: a self-hosted AI gateway for clinical assistants.", no_args_is_help=True
)


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
        timeout_graceful_shutdown=math.ceil(settings.server.shutdown_timeout_s),  # api/shutdown
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


DetailsOpt = Annotated[
    bool,
    typer.Option(
        "--details",
        help="Also print, on stderr, what the gateway did: a JSON line with the deployment, "
        "route, cache outcome and the iatros extension (sources, escalation).",
    ),
]


@app.command()
def chat(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")] = "assistant",
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    knowledge: Annotated[
        str | None, typer.Option(help="Ground the answer in this knowledge collection.")
    ] = None,
    details: DetailsOpt = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ask a question and stream the answer to the terminal.

    In-process (no --url), the question takes the server's own path (``ChatService``):
    admission, grounding, cache, routing and usage records, against the data directory.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if max_tokens:
        body["max_tokens"] = max_tokens
    if knowledge:
        body["iatros"] = {"knowledge": knowledge}
    url = url or os.environ.get("IATROS_URL")
    if url:
        _chat_over_http(url, key, body, details)
        return
    asyncio.run(_chat_in_process(_settings(config), body, key, details))


def _print_details(headers: Any, extension: Any) -> None:
    info = {
        "model": headers.get("x-iatros-model"),
        "route": headers.get("x-iatros-route"),
        "cache": headers.get("x-iatros-cache"),
        "iatros": extension,
    }
    sys.stderr.write(orjson.dumps(info).decode() + "\n")
    sys.stderr.flush()


def _chat_over_http(url: str, key: str | None, body: dict[str, Any], details: bool) -> None:
    extension: Any = None
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
            if "iatros" in data:  # sources first, the verification on the last chunk
                extension = {**(extension or {}), **data["iatros"]}
            for choice in data.get("choices", []):
                sys.stdout.write(choice["delta"].get("content") or "")
                sys.stdout.flush()
    sys.stdout.write("\n")
    if details:
        _print_details(resp.headers, extension)


async def _chat_in_process(
    settings: Settings, body: dict[str, Any], key: str | None, details: bool
) -> None:
    """Drive the chat service directly, without HTTP: the same path the server runs."""
    from iatros.api import schemas
    from iatros.api.chat import chat_request
    from iatros.auth import ANONYMOUS
    from iatros.errors import GatewayError
    from iatros.gateway import RequestContext
    from iatros.gateway.chat import Streaming
    from iatros.observability.logging import configure_logging
    from iatros.services import Services

    configure_logging("warning")
    os.environ.setdefault("IATROS_DATA_DIR", str(settings.data_dir))
    services = Services.build(settings, run_jobs=False)
    await services.start()
    ctx: RequestContext | None = None
    try:
        principal = await services.governance.authenticate(key) if key else ANONYMOUS
        ctx = RequestContext(principal=principal, endpoint="chat")
        request = chat_request(
            schemas.ChatCompletionRequest.model_validate(body, strict=True), principal
        )
        reply = await services.chat.respond(ctx, request)
        deltas = reply.deltas if isinstance(reply, Streaming) else _aiter(reply.deltas())
        async for delta in deltas:
            sys.stdout.write(delta.delta.get("content") or "")
            sys.stdout.flush()
        sys.stdout.write("\n")
        if details:
            _print_details(ctx.headers(), reply.extension)
    except GatewayError as exc:
        if ctx is not None:
            ctx.status = exc.status
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    finally:
        if ctx is not None:
            services.chat.finish(ctx)
        await services.close()


async def _aiter(items: Any) -> Any:
    for item in items:
        yield item


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

app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(alerts_app, name="alerts")
app.add_typer(jobs_app, name="jobs")
app.command()(worker)
app.add_typer(reviews_app, name="reviews")
app.add_typer(agents_app, name="agents")
app.add_typer(plugins_app, name="plugins")
app.add_typer(scribe_app, name="scribe")
app.add_typer(radiographs_app, name="radiographs")
app.add_typer(releases_app, name="releases")
app.add_typer(experiments_app, name="experiments")
app.add_typer(rollouts_app, name="rollouts")


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
    embed = gateway.embedder.internal("knowledge")
    assert embed is not None
    kb = KnowledgeBase(settings.knowledge, settings.data_dir, embed, run_jobs=False)
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
