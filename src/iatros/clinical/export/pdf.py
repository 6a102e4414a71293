"""The note as a PDF (WeasyPrint): practice header, patient, date, clinician, sections,
structured fields, and the signature block — or a DRAFT mark while it is unsigned.

HTML and CSS rendered by WeasyPrint (BSD; pure Python over Pango, which Debian ships):
the layout stays readable and every value is escaped, so a transcript cannot inject
markup into the document.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

LABELS = {
    "en": {"patient": "Patient", "born": "born", "date": "Date", "clinician": "Clinician",
           "draft": "DRAFT — not signed", "signed": "Electronically signed by",
           "on": "on", "hash": "Content SHA-256", "meds": "Medications", "allergies": "Allergies",
           "vitals": "Vital signs", "teeth": "Teeth (FDI)", "unsupported": "not found in the "
           "transcript", "version": "version", "lines": "transcript lines"},
    "fr": {"patient": "Patient", "born": "né(e) le", "date": "Date", "clinician": "Praticien",
           "draft": "BROUILLON — non signé", "signed": "Signé électroniquement par",
           "on": "le", "hash": "Empreinte SHA-256", "meds": "Médicaments",
           "allergies": "Allergies", "vitals": "Constantes", "teeth": "Dents (FDI)",
           "unsupported": "absent de la transcription", "version": "version",
           "lines": "lignes de la transcription"},
}  # fmt: skip

CSS = """
@page { size: A4; margin: 18mm 16mm 20mm 16mm;
        @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: "DejaVu Sans", sans-serif; font-size: 10pt; color: #1a1a1a; }
header { border-bottom: 2px solid #1d4e89; padding-bottom: 6px; margin-bottom: 10px; }
header .practice { font-size: 14pt; font-weight: bold; color: #1d4e89; }
h1 { font-size: 13pt; margin: 8px 0; }
h2 { font-size: 11pt; color: #1d4e89; margin: 12px 0 4px; border-bottom: 1px solid #ccd; }
table.meta td { padding: 1px 10px 1px 0; vertical-align: top; }
ul { margin: 2px 0 2px 16px; padding: 0; }
li { margin: 2px 0; }
.refs { color: #777; font-size: 8pt; }
.flag { color: #a40000; font-size: 8pt; }
.draft { color: #a40000; font-weight: bold; font-size: 12pt; border: 2px solid #a40000;
         padding: 4px 8px; display: inline-block; }
.signature { margin-top: 18px; border-top: 1px solid #999; padding-top: 6px; }
.hash { font-family: "DejaVu Sans Mono", monospace; font-size: 7pt; color: #555; }
"""


def _med(m: dict[str, Any]) -> str:
    parts = [m["name"]]
    if m.get("dose"):
        parts.append(f"{m['dose']['value']:g} {m['dose']['unit']}")
    for key in ("route", "frequency"):
        if m.get(key):
            parts.append(str(m[key]))
    return ", ".join(parts)


def _vital(v: dict[str, Any]) -> str:
    value = v["value"]
    if isinstance(value, dict):
        value = f"{value['systolic']}/{value['diastolic']}"
    return f"{v['name'].replace('_', ' ')}: {value} {v['unit']}"


def note_html(enc: dict[str, Any], practice: str) -> str:
    lang = enc.get("language") if enc.get("language") in LABELS else "en"
    t = LABELS[str(lang)]
    note = enc["note"]
    patient = enc.get("patient") or {}
    clinician = enc.get("clinician") or {}
    created = datetime.fromisoformat(enc["created_at"]).strftime("%Y-%m-%d %H:%M UTC")
    who = escape(patient.get("name") or patient.get("id") or "—")
    if patient.get("birth_date"):
        who += f" ({t['born']} {escape(patient['birth_date'])})"
    if patient.get("id") and patient.get("name"):
        who += f" · {escape(patient['id'])}"
    out = [
        f"<html><head><meta charset='utf-8'><style>{CSS}</style></head><body>",
        f"<header><div class='practice'>{escape(practice)}</div></header>",
        f"<h1>{escape(note.get('title') or enc['template'])} "
        f"<span class='refs'>({t['version']} {enc['version']})</span></h1>",
        "<table class='meta'>",
        f"<tr><td><b>{t['patient']}</b></td><td>{who}</td></tr>",
        f"<tr><td><b>{t['date']}</b></td><td>{created}</td></tr>",
        f"<tr><td><b>{t['clinician']}</b></td><td>{escape(clinician.get('name') or '—')}</td></tr>",
        "</table>",
    ]
    if enc["status"] != "signed":
        out.append(f"<p class='draft'>{t['draft']}</p>")
    for section in note["sections"]:
        if not section["statements"]:
            continue
        out.append(f"<h2>{escape(section['title'])}</h2><ul>")
        for s in section["statements"]:
            refs = (
                f" <span class='refs'>[{t['lines']} {', '.join(map(str, s['lines']))}]</span>"
                if s.get("lines")
                else ""
            )
            flag = (
                f" <span class='flag'>({t['unsupported']})</span>" if s.get("unsupported") else ""
            )
            out.append(f"<li>{escape(s['text'])}{refs}{flag}</li>")
        out.append("</ul>")
    structured = note.get("structured") or {}
    blocks = (
        ("meds", [_med(m) for m in structured.get("medications", [])]),
        ("allergies", [a["substance"] for a in structured.get("allergies", [])]),
        ("vitals", [_vital(v) for v in structured.get("vitals", [])]),
        ("teeth", [", ".join(str(x["fdi"]) for x in structured.get("teeth", []))]
         if structured.get("teeth") else []),
    )  # fmt: skip
    for key, items in blocks:
        if items:
            out.append(f"<h2>{t[key]}</h2><ul>")
            out.extend(f"<li>{escape(item)}</li>" for item in items)
            out.append("</ul>")
    signature = note.get("signature")
    if enc["status"] == "signed" and signature:
        signed_at = datetime.fromisoformat(signature["signed_at"]).strftime("%Y-%m-%d %H:%M UTC")
        digest = next(
            (v["content_sha256"] for v in enc["versions"] if v["version"] == enc["version"]), ""
        )
        qualification = f", {escape(signature['qualification'])}" if signature.get(
            "qualification") else ""  # fmt: skip
        out.append(
            f"<div class='signature'>{t['signed']} <b>{escape(signature['name'])}</b>"
            f"{qualification} {t['on']} {signed_at}<br>"
            f"<span class='hash'>{t['hash']}: {escape(digest or '')}</span></div>"
        )
    out.append("</body></html>")
    return "".join(out)


def render_pdf(enc: dict[str, Any], practice: str) -> bytes:
    from weasyprint import HTML

    pdf: bytes = HTML(string=note_html(enc, practice)).write_pdf()
    return pdf
