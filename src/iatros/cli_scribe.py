"""``iatros scribe ...``: the clinical scribe from a terminal, against a running server.

    iatros scribe transcribe visit.webm --language fr --format srt
    iatros scribe new --audio visit.m4a --template dental --patient-id p-42
    iatros scribe new --transcript visit.txt        # lines tagged [doctor] / [patient]
    iatros scribe show ENCOUNTER_ID ; iatros scribe sign ENCOUNTER_ID --name "Dr Roe"
    iatros scribe amend ENCOUNTER_ID ; iatros scribe export ENCOUNTER_ID --format pdf -o note.pdf

The server (``--url`` or ``IATROS_URL``, default http://127.0.0.1:8080) does the work, so
the models are loaded once and every step is accounted and audited there. A refused
file or edit prints the server's message and exits 1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer

from iatros.cli_common import KeyOpt, UrlOpt, _fail, out

scribe_app = typer.Typer(help="The clinical scribe: transcribe, draft, sign, export.")
DEFAULT_URL = "http://127.0.0.1:8080"


def _call(
    url: str | None,
    key: str | None,
    method: str,
    path: str,
    *,
    json: Any = None,
    files: Any = None,
    data: Any = None,
) -> httpx.Response:
    base = (url or os.environ.get("IATROS_URL") or DEFAULT_URL).rstrip("/")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if json is not None:
        headers["content-type"] = "application/json"
    try:
        response = httpx.request(
            method, base + path, json=json, files=files, data=data, headers=headers, timeout=900
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {base}: {exc}")
        raise
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['message']} ({error.get('code')})"
        except Exception:
            message = response.text[:300]
        _fail(f"{response.status_code}: {message}", 1)
    return response


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
        raise


def _show(body: dict[str, Any]) -> None:
    out.print(f"[bold]{body['id']}[/bold] {body['template']} v{body['version']} {body['status']}")
    for section in body["note"]["sections"]:
        out.print(f"\n[bold]{section['title']}[/bold]")
        for s in section["statements"]:
            mark = "[red]? unsupported[/red]" if s["unsupported"] else f"[dim]L{s['lines']}[/dim]"
            out.print(f"  - {s['text']} {mark}", highlight=False)
    cov = body["note"]["coverage"]
    out.print(f"\nlinked statements: {cov['linked']}/{cov['statements']}")


@scribe_app.command()
def transcribe(
    file: Path,
    language: Annotated[str | None, typer.Option(help="ISO-639-1 code; default: detect")] = None,
    model: Annotated[str, typer.Option(help="whisper-1 routes by language")] = "whisper-1",
    fmt: Annotated[str, typer.Option("--format", help="text, srt, vtt, json, verbose_json")] = (
        "text"
    ),
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Transcribe a recording (WAV, MP3, M4A, OGG, WebM)."""
    data = {"model": model, "response_format": fmt, **({"language": language} if language else {})}
    resp = _call(url, key, "POST", "/v1/audio/transcriptions",
                 files={"file": (file.name, _read(file))}, data=data)  # fmt: skip
    typer.echo(resp.text.rstrip("\n"))


@scribe_app.command()
def new(
    audio: Annotated[Path | None, typer.Option(help="A recording of the consultation")] = None,
    transcript: Annotated[Path | None, typer.Option(help="A transcript, one turn a line")] = None,
    template: Annotated[str, typer.Option(help="soap or dental")] = "soap",
    language: Annotated[str | None, typer.Option()] = None,
    patient_id: Annotated[str | None, typer.Option()] = None,
    patient_name: Annotated[str | None, typer.Option()] = None,
    clinician: Annotated[str | None, typer.Option(help="The clinician's name")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole encounter")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Create an encounter and its draft note from a recording or a transcript."""
    if (audio is None) == (transcript is None):
        _fail("give exactly one of --audio or --transcript")
    if audio is not None:
        fields = {"template": template, "language": language, "patient_id": patient_id,
                  "patient_name": patient_name, "clinician_name": clinician}  # fmt: skip
        resp = _call(url, key, "POST", "/v1/scribe/encounters",
                     files={"file": (audio.name, _read(audio))},
                     data={k: v for k, v in fields.items() if v})  # fmt: skip
    else:
        assert transcript is not None
        body: dict[str, Any] = {
            "transcript": _read(transcript).decode("utf-8", "replace"),
            "template": template,
        }
        if language:
            body["language"] = language
        patient = {k: v for k, v in (("id", patient_id), ("name", patient_name)) if v}
        if patient:
            body["patient"] = patient
        if clinician:
            body["clinician"] = {"name": clinician}
        resp = _call(url, key, "POST", "/v1/scribe/encounters", json=body)
    found = resp.json()
    if resp.status_code == 202:  # a long recording: transcribed by a background job
        found = _wait(url, key, found)
    if as_json:
        typer.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    else:
        _show(found)


def _wait(url: str | None, key: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Poll a ``transcribing`` encounter, printing its progress, until it is done."""
    path = f"/v1/scribe/encounters/{body['id']}"
    last = -1.0
    while body["status"] == "transcribing":
        if body["progress"] != last:
            job = body.get("job") or {}
            out.print(f"transcribing {body['id']}: chunk {job.get('chunks_done', 0)} of "
                      f"{job.get('chunks_total', '?')} ({body['progress']:.0%})")  # fmt: skip
            last = body["progress"]
        time.sleep(2)
        body = _call(url, key, "GET", path).json()
    if body["status"] != "draft":
        error = (body.get("job") or {}).get("error") or {}
        _fail(f"{body['id']} {body['status']}: {error.get('message', '')}", 1)
    return body


@scribe_app.command()
def show(
    encounter: str,
    version: Annotated[int | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Show an encounter's note (statements with their transcript lines)."""
    query = f"?version={version}" if version else ""
    body = _call(url, key, "GET", f"/v1/scribe/encounters/{encounter}{query}").json()
    if as_json:
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        _show(body)


@scribe_app.command("list")
def list_encounters(url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Your tenant's encounters, newest first."""
    for item in _call(url, key, "GET", "/v1/scribe/encounters").json()["data"]:
        out.print(f"{item['id']}  {item['created_at'][:19]}  {item['template']:7} "
                  f"v{item['version']} {item['status']}")  # fmt: skip


@scribe_app.command()
def sign(
    encounter: str,
    name: Annotated[str, typer.Option(help="The signing clinician's name")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Sign the current version (then immutable; amend to change it)."""
    body = _call(url, key, "POST", f"/v1/scribe/encounters/{encounter}/sign",
                 json={"name": name}).json()  # fmt: skip
    out.print(f"signed version {body['version']} of {encounter}")


@scribe_app.command()
def amend(encounter: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Start an amendment: a new draft version of the signed note."""
    body = _call(url, key, "POST", f"/v1/scribe/encounters/{encounter}/amend").json()
    out.print(f"version {body['version']} of {encounter} is a draft")
