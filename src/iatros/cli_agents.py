"""``iatros agents schema|apply``: agent and workflow templates from a terminal.

``apply DIR`` stores every ``*.yaml``, ``*.yml`` and ``*.json`` template under DIR (or the
files named) for a tenant; applying unchanged files again changes nothing (idempotent).
With ``--url`` it calls a running server's ``/v1/agents`` with ``--key``; without, it acts
in-process on the configured database as ``cli`` (audited under that name).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer

from iatros.cli_common import ConfigOpt, KeyOpt, UrlOpt, _fail, _settings, err, out

agents_app = typer.Typer(help="Agent and workflow templates.", no_args_is_help=True)
plugins_app = typer.Typer(help="Installed plugins (tools, providers, backends).",
                          no_args_is_help=True)  # fmt: skip

SUFFIXES = (".yaml", ".yml", ".json")


@agents_app.command("schema")
def agents_schema(
    output: Annotated[Path | None, typer.Option("--out", help="Write to this file.")] = None,
) -> None:
    """Print the JSON Schema of templates (the one served at /v1/schemas/agent.json)."""
    from iatros.agents.spec import json_schema

    text = orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode()
    if output is not None:
        output.write_text(text + "\n")
        return
    print(text)


def template_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            _fail(f"no such file or directory: {path}")
    return found


def _apply_remote(url: str, key: str | None, files: list[Path]) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    results: list[dict[str, Any]] = []
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as http:
        for path in files:
            try:
                r = http.post("/v1/agents", json={"content": path.read_text(),
                                                  "source": str(path)})  # fmt: skip
            except httpx.HTTPError as exc:
                _fail(f"cannot reach {url}: {exc}")
            body = r.json()
            if r.status_code >= 400:
                results.append({"file": str(path), "error": body["error"]["message"]})
            else:
                results.append({"file": str(path), **body})
    return results


def _apply_local(config: Path | None, tenant: str, files: list[Path]) -> list[dict[str, Any]]:
    from iatros.agents.loader import TemplateError
    from iatros.agents.store import AgentStore
    from iatros.agents.templates import Templates
    from iatros.auth import Principal
    from iatros.governance.service import Governance
    from iatros.tools import load_tools

    settings = _settings(config, preload=False)

    async def run() -> list[dict[str, Any]]:
        gov = Governance(settings)
        await gov.start()
        try:
            templates = Templates(settings, gov, AgentStore(gov.db), load_tools())
            principal = Principal(tenant=tenant, key_id="cli", role="admin")
            results: list[dict[str, Any]] = []
            for path in files:
                try:
                    row, created = await templates.apply(principal, path.read_text(), str(path))
                except TemplateError as exc:
                    message = "; ".join(str(p) for p in exc.problems)
                    results.append({"file": str(path), "error": message})
                    continue
                results.append({"file": str(path), **row, "created": created})
            return results
        finally:
            await gov.close()

    return asyncio.run(run())


@agents_app.command("apply")
def agents_apply(
    paths: Annotated[list[Path], typer.Argument(help="Template files or directories.")],
    tenant: Annotated[str, typer.Option(help="The tenant (in-process only).")] = "default",
    url: UrlOpt = None,
    key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Store templates (a new version for each changed one; unchanged ones stay)."""
    files = template_files(paths)
    if not files:
        _fail("no template files (*.yaml, *.yml, *.json) found")
    base = url or os.environ.get("IATROS_URL")
    results = _apply_remote(base, key, files) if base else _apply_local(config, tenant, files)
    failed = 0
    for result in results:
        if "error" in result:
            failed += 1
            err.print(f"[red]error:[/red] {result['error']}")
        else:
            state = "created" if result["created"] else "unchanged"
            out.print(f"{result['file']}: {result['kind']} {result['name']} "
                      f"v{result['version']} {state}")  # fmt: skip
    if failed:
        raise typer.Exit(1)


@plugins_app.command("list")
def plugins_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Every plugin: loaded, skipped (with the reason) or available (not imported yet).

    Tools are imported to check them; providers and backends are imported only when a
    configuration names them, so they show as available here.
    """
    from rich.table import Table

    from iatros.agents.marketplace import plugin_list
    from iatros.tools import load_tools

    load_tools()
    rows = plugin_list()
    if as_json:
        for row in rows:
            print(orjson.dumps(row).decode())
        return
    table = Table("group", "name", "state", "distribution", "version", "target / error")
    for row in rows:
        table.add_row(row["group"], row["name"], row["state"], row["distribution"] or "",
                      row["version"] or "", row["error"] or row["target"])  # fmt: skip
    out.print(table)
