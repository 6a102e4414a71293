"""``iatros radiographs ...``: radiographs from a terminal, against a running server.

    iatros radiographs upload pano.dcm bw-left.png --patient-id p-42 --wait
    iatros radiographs list --patient-id p-42 ; iatros radiographs show STUDY_ID
    iatros radiographs export STUDY_ID --format pdf|fhir|sr -o report.pdf

The server (``--url`` or ``IATROS_URL``) does the work, so de-identification, storage
and the audit happen in one place. A refused file prints the server's message (naming
the file and the reason) and exits 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import typer

from iatros.cli_common import KeyOpt, UrlOpt, _fail, out
from iatros.cli_scribe import _call, _read

radiographs_app = typer.Typer(help="Radiographs: upload, list, show, export.")
EXPORTS = {"pdf": "report.pdf", "fhir": "fhir", "sr": "sr.dcm"}


def _show(study: dict[str, Any]) -> None:
    signed = " signed" if study["signed"] else ""
    out.print(f"[bold]{study['id']}[/bold] {study['status']}{signed} patient {study['patient']}")
    for image in study["images"]:
        masked = len(image["deidentified"].get("burned_in_text", {}).get("regions_masked", []))
        out.print(f"  {image['id']} {image['kind']} {image['width']}x{image['height']} "
                  f"{image['status']} {image['progress']:.0%} text regions masked: {masked}",
                  highlight=False)  # fmt: skip


@radiographs_app.command("upload")
def upload(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files (one study).")],
    patient_id: Annotated[str, typer.Option("--patient-id", help="The patient's id.")],
    description: Annotated[str | None, typer.Option(help="What the study is.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until processing has ended.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study as JSON.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Upload radiographs as one study (validated, then processed in the background)."""
    parts = [("files", (f.name, _read(f), "application/octet-stream")) for f in files]
    data = {"patient_id": patient_id, **({"description": description} if description else {})}
    study = _call(url, key, "POST", "/v1/radiographs/studies", files=parts, data=data).json()
    deadline = time.time() + 600
    while wait and study["status"] == "processing" and time.time() < deadline:
        time.sleep(0.3)
        study = _call(url, key, "GET", f"/v1/radiographs/studies/{study['id']}").json()
    if as_json:
        print(orjson.dumps(study, option=orjson.OPT_INDENT_2).decode())
    else:
        _show(study)
    if study["status"] == "failed":
        _fail("processing failed", 1)


@radiographs_app.command("list")
def list_studies(
    patient_id: Annotated[str | None, typer.Option("--patient-id")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Your tenant's studies (of one patient)."""
    params = f"?patient_id={patient_id}" if patient_id else ""
    for study in _call(url, key, "GET", "/v1/radiographs/studies" + params).json()["data"]:
        _show(study)


@radiographs_app.command("show")
def show(study_id: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """A study, its images and their annotations."""
    study = _call(url, key, "GET", f"/v1/radiographs/studies/{study_id}").json()
    _show(study)
    for image in study["images"]:
        path = f"/v1/radiographs/images/{image['id']}/annotations"
        for a in _call(url, key, "GET", path).json()["data"]:
            tooth = a["tooth"] or "-"
            out.print(f"    {a['id']} {a['source']}/{a['status']} {a['finding']} tooth {tooth} "
                      f"{a['shape']} {a['points']}", highlight=False)  # fmt: skip


@radiographs_app.command("export")
def export(
    study_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    fmt: Annotated[Literal["pdf", "fhir", "sr"], typer.Option("--format")] = "pdf",
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """The report (PDF), the FHIR Bundle (JSON) or the DICOM SR of a study."""
    body = _call(url, key, "GET", f"/v1/radiographs/studies/{study_id}/{EXPORTS[fmt]}").content
    try:
        output.write_bytes(body)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    out.print(f"wrote {output} ({len(body)} bytes)")
