"""The ``iatros`` command: serve, chat, models."""

from __future__ import annotations

import asyncio
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
out = Console()

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
    err.print(
        f"Iatros serving on http://{settings.server.host}:{settings.server.port} "
        f"(docs at /docs, {settings.server.workers} worker(s))"
    )
    uvicorn.run(
        "iatros.api.app:app_from_env",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        backlog=4096,
    )


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
