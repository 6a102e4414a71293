"""``iatros reviews list|show|answer|dismiss``: the review queue from a terminal.

With ``--url`` (or ``IATROS_URL``) the commands call a running server's ``/v1/reviews``
API with ``--key``; without, they act in-process on the configured database as the
platform administrator ``cli`` (every change audited under that name).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import orjson
import typer
from rich.table import Table

from iatros.cli_common import ConfigOpt, KeyOpt, UrlOpt, _fail, _settings, err, out

T = TypeVar("T")

reviews_app = typer.Typer(help="The human review queue (escalations and approvals).")

CLI_PRINCIPAL: dict[str, Any] = {
    "tenant": "default",
    "key_id": "cli",
    "role": "admin",
    "platform": True,
}


def _remote(url: str, key: str | None, method: str, path: str, body: Any = None) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text[:300]
        _fail(f"{response.status_code}: {message}", 1)
    return response.json()


def _local(config: Path | None, action: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``action(desk, principal)`` against the configured store, in-process."""
    from iatros.auth import Principal
    from iatros.errors import GatewayError
    from iatros.services import Services

    settings = _settings(config, preload=False)

    async def run() -> T:
        services = Services.build(settings, run_jobs=False)
        await services.start()
        try:
            return await action(services.reviews, Principal(**CLI_PRINCIPAL))
        finally:
            await services.close()

    try:
        return asyncio.run(run())
    except GatewayError as exc:
        _fail(f"{exc.status}: {exc}", 1)
        raise AssertionError from None


def _url(url: str | None) -> str | None:
    return url or os.environ.get("IATROS_URL")


@reviews_app.command("list")
def reviews_list(
    status: Annotated[
        str | None, typer.Option(help="open, claimed, answered, dismissed or pending.")
    ] = "pending",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List review items, oldest question first within the newest 100."""
    from iatros.reviews import ReviewFilter

    if (base := _url(url)) is not None:
        query = f"?status={status}" if status else ""
        items = _remote(base, key, "GET", f"/v1/reviews{query}")["data"]
    else:
        flt = ReviewFilter(status=status, limit=100)
        items = _local(config, lambda desk, p: desk.queue.list(desk.queue.scope(p), flt))
    if as_json:
        for item in items:
            print(orjson.dumps(item).decode())
        return
    table = Table("id", "tenant", "reason", "status", "age", "question")
    for item in items:
        age_h = item["age_s"] / 3600
        table.add_row(
            item["id"],
            item["tenant"],
            item["reason"],
            item["status"] + (" (overdue)" if item["overdue"] else ""),
            f"{age_h:.1f} h",
            item["question"][:80],
        )
    out.print(table)


@reviews_app.command("show")
def reviews_show(
    review_id: Annotated[str, typer.Argument(help="The item's id (rev_…).")],
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One item as JSON: question, excerpt, candidate sources, draft, answer."""
    if (base := _url(url)) is not None:
        item = _remote(base, key, "GET", f"/v1/reviews/{review_id}")
    else:
        item = _local(config, lambda desk, p: desk.queue.get(desk.queue.scope(p), review_id))
    print(orjson.dumps(item, option=orjson.OPT_INDENT_2).decode())


@reviews_app.command("answer")
def reviews_answer(
    review_id: Annotated[str, typer.Argument(help="The item's id (rev_…).")],
    text: Annotated[str, typer.Option("--text", help="The answer the asker will see.")],
    name: Annotated[str, typer.Option("--name", help="Reviewer's name, shown with it.")] = "",
    save: Annotated[
        bool, typer.Option("--save/--no-save", help="Also save it to the knowledge base.")
    ] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Answer an escalation (exit 1 with 409 if it is already closed)."""
    if (base := _url(url)) is not None:
        body = {"answer": text, "reviewer_name": name, "save_to_knowledge": save}
        item = _remote(base, key, "POST", f"/v1/reviews/{review_id}/answer", body)
    else:
        item = _local(
            config,
            lambda desk, p: desk.answer(
                desk.queue.scope(p), review_id, p, text, name, save_to_knowledge=save
            ),
        )
    saved = f" (saved as {item['document_id']})" if item.get("document_id") else ""
    err.print(f"answered {item['id']}{saved}")


@reviews_app.command("dismiss")
def reviews_dismiss(
    review_id: Annotated[str, typer.Argument(help="The item's id (rev_…).")],
    note: Annotated[str, typer.Option("--note", help="Why (kept with the item).")] = "",
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Close an item without an answer."""
    if (base := _url(url)) is not None:
        _remote(base, key, "POST", f"/v1/reviews/{review_id}/dismiss", {"note": note})
    else:
        _local(
            config,
            lambda desk, p: desk.queue.dismiss(desk.queue.scope(p), review_id, p, note),
        )
    err.print(f"dismissed {review_id}")
