"""``iatros alerts list|silence|unsilence``: a running server's alerts from a terminal.

Alerts live in the serving process (the detectors watch its traffic), so these commands
always talk to a server: ``--url`` (or ``IATROS_URL``, default ``http://127.0.0.1:8080``)
with ``--key`` (or ``IATROS_API_KEY``). Silencing needs a platform administrator's key.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.table import Table

from iatros.cli_common import KeyOpt, UrlOpt, _fail, out

alerts_app = typer.Typer(help="Alerts of a running server: list, silence, unsilence.")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _call(url: str | None, key: str | None, method: str, path: str, body: Any = None) -> Any:
    base = (url or os.environ.get("IATROS_URL") or "http://127.0.0.1:8080").rstrip("/")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, base + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {base}: {exc}")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text[:300]
        _fail(f"{response.status_code}: {message}", 1)
    return response.json()


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` in seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise typer.BadParameter("use a number and a unit: 30m, 2h, 1d", param_hint="--for")
    return float(match.group(1)) * _UNIT[match.group(2)]


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@alerts_app.command("list")
def list_alerts(
    url: UrlOpt = None,
    key: KeyOpt = None,
    resolved: Annotated[
        bool, typer.Option("--resolved", help="Also the recently resolved.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON as is.")] = False,
) -> None:
    """Active alerts (and silences); exit code 1 when a critical one is firing."""
    data = _call(url, key, "GET", "/admin/alerts")
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    elif not data.get("enabled"):
        out.print("alerts are off (alerts.enabled: false)")
        return
    else:
        rows = data["active"] + (data["resolved"] if resolved else [])
        table = Table("severity", "alert", "scope", "state", "since", "summary")
        for alert in rows:
            state = alert["state"]
            if alert.get("silenced"):
                state += " (silenced)"
            elif alert.get("inhibited"):
                state += " (inhibited)"
            table.add_row(
                alert["severity"], alert["name"], alert["group"], state,
                _when(alert["starts_at"]), alert["summary"],
            )  # fmt: skip
        out.print(table if rows else "no active alerts")
        for silence in data.get("silences", []):
            matchers = ",".join(f"{k}={v}" for k, v in silence["matchers"].items())
            out.print(f"silence {silence['id']}: {matchers} until {_when(silence['ends_at'])}")
    firing = [a for a in data.get("active", []) if not a.get("silenced")]
    if any(a["severity"] == "critical" for a in firing):
        raise typer.Exit(1)


@alerts_app.command("silence")
def silence(
    matchers: Annotated[
        list[str], typer.Argument(help="label=value, e.g. deployment=gpt-eu alertname=error_rate")
    ],
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1d.")] = "1h",
    comment: Annotated[str, typer.Option("--comment", help="Why (kept with the silence).")] = "",
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Silence the alerts matching every label=value until the duration has passed."""
    parsed: dict[str, str] = {}
    for matcher in matchers:
        name, sep, value = matcher.partition("=")
        if not sep or not name or not value:
            raise typer.BadParameter(f"{matcher!r} is not label=value", param_hint="MATCHERS")
        parsed[name] = value
    body = {"matchers": parsed, "duration_s": parse_duration(duration), "comment": comment}
    created = _call(url, key, "POST", "/admin/alerts/silences", body)
    out.print(f"{created['id']} until {_when(created['ends_at'])}")


@alerts_app.command("unsilence")
def unsilence(
    silence_id: Annotated[str, typer.Argument(help="The silence's id (sil_...).")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """End a silence now."""
    _call(url, key, "DELETE", f"/admin/alerts/silences/{silence_id}")
    out.print(f"{silence_id} ended")
