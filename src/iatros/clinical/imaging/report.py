"""The radiograph report as a PDF (WeasyPrint, as the scribe's notes): practice header,
patient (the keyed hash: the report names no one), date, each image with its accepted
annotations drawn, the findings table by tooth, the clinician's conclusion and the
signature block — or a DRAFT mark while the study is unsigned.

Only accepted annotations are given to this module (:meth:`RadiographService.export_material`),
so an AI proposal nobody accepted cannot reach the report. Every value is escaped.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from html import escape
from typing import Any

LABELS = {
    "caries": "Caries", "deep_caries": "Deep caries", "periapical_lesion": "Periapical lesion",
    "impacted_tooth": "Impacted tooth", "restoration": "Restoration", "bone_loss": "Bone loss",
    "other": "Other",
}  # fmt: skip
COLOURS = ["#e8590c", "#1c7ed6", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c"]

CSS = """
@page { size: A4; margin: 16mm 14mm 18mm 14mm;
        @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: "DejaVu Sans", sans-serif; font-size: 10pt; color: #1a1a1a; }
header { border-bottom: 2px solid #1d4e89; padding-bottom: 6px; margin-bottom: 10px; }
header .practice { font-size: 14pt; font-weight: bold; color: #1d4e89; }
h1 { font-size: 13pt; margin: 8px 0; }
h2 { font-size: 11pt; color: #1d4e89; margin: 12px 0 4px; border-bottom: 1px solid #ccd; }
table.meta td { padding: 1px 10px 1px 0; }
table.findings { border-collapse: collapse; width: 100%; }
table.findings th, table.findings td { border: 1px solid #bbc; padding: 3px 5px; text-align: left; }
figure { margin: 6px 0 10px; page-break-inside: avoid; }
figure img { width: 100%; }
figcaption { font-size: 8pt; color: #555; }
.draft { color: #a40000; font-weight: bold; border: 2px solid #a40000; padding: 4px 8px;
         display: inline-block; }
.signature { margin-top: 18px; border-top: 1px solid #999; padding-top: 6px; }
.swatch { display: inline-block; width: 9px; height: 9px; margin-right: 4px; }
"""


def draw(preview: bytes, annotations: list[dict[str, Any]], max_side: int = 1600) -> bytes:
    """The preview with the annotations drawn (numbered like the findings table)."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(preview)) as opened:
        img = opened.convert("RGB")
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    pen = ImageDraw.Draw(img)
    line = max(2, round(max(img.size) / 500))
    try:
        font: Any = ImageFont.truetype("DejaVuSans-Bold.ttf", max(12, line * 7))
    except OSError:
        font = ImageFont.load_default()
    for ann in annotations:
        colour = COLOURS[(ann["number"] - 1) % len(COLOURS)]
        pts = [(x * scale, y * scale) for x, y in ann["points"]]
        if ann["shape"] == "box":
            (x0, y0), (x1, y1) = pts
            pen.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=colour,
                          width=line)  # fmt: skip
        elif ann["shape"] == "polygon":
            pen.line([*pts, pts[0]], fill=colour, width=line)
        else:
            x, y = pts[0]
            r = line * 4
            pen.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=line)
        x, y = pts[0]
        pen.text((x + line * 2, max(0, y - line * 9)), str(ann["number"]), fill=colour, font=font)
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=3)
    return out.getvalue()


def report_html(material: dict[str, Any]) -> str:
    study, details = material["study"], material["details"]
    anns = sorted(material["annotations"], key=lambda a: (a["tooth"] or 99, a["created_at"]))
    for number, ann in enumerate(anns, start=1):
        ann["number"] = number
    created = datetime.fromisoformat(study["created_at"]).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"<html><head><meta charset='utf-8'><style>{CSS}</style></head><body>",
        f"<header><div class='practice'>{escape(material['practice'])}</div></header>",
        "<h1>Radiograph report</h1><table class='meta'>",
        f"<tr><td><b>Patient</b></td><td>{escape(study['patient'])}</td></tr>",
        f"<tr><td><b>Date</b></td><td>{created}</td></tr>",
        f"<tr><td><b>Study</b></td><td>{escape(study['id'])}"
        + (f" — {escape(details['description'])}" if details.get("description") else "")
        + "</td></tr></table>",
    ]
    if not study["signed"]:
        out.append("<p class='draft'>DRAFT — not signed</p>")
    out.append("<h2>Images</h2>")
    for n, image in enumerate(study["images"], start=1):
        preview = material["previews"].get(image["id"])
        if preview is None:
            continue
        mine = [a for a in anns if a["image_id"] == image["id"]]
        data = base64.b64encode(draw(preview, mine)).decode()
        spacing = image.get("pixel_spacing_mm")
        caption = f"Image {n}: {image['kind'].upper()} {image['width']}x{image['height']} px"
        if spacing:
            caption += f", pixel spacing {spacing[0]:g}x{spacing[1]:g} mm"
        out.append(f"<figure><img src='data:image/png;base64,{data}'>"
                   f"<figcaption>{escape(caption)}</figcaption></figure>")  # fmt: skip
    out.append("<h2>Findings by tooth</h2>")
    if anns:
        image_no = {img["id"]: n for n, img in enumerate(study["images"], start=1)}
        out.append("<table class='findings'><tr><th>#</th><th>Tooth (FDI)</th><th>Finding</th>"
                   "<th>Image</th><th>Source</th><th>Note</th></tr>")  # fmt: skip
        for ann in anns:
            colour = COLOURS[(ann["number"] - 1) % len(COLOURS)]
            source = "AI, accepted by clinician" if ann["source"] == "ai" else "Clinician"
            out.append(
                f"<tr><td><span class='swatch' style='background:{colour}'></span>"
                f"{ann['number']}</td><td>{ann['tooth'] or '—'}</td>"
                f"<td>{escape(LABELS.get(ann['finding'], ann['finding']))}</td>"
                f"<td>{image_no.get(ann['image_id'], '?')}</td><td>{source}</td>"
                f"<td>{escape(ann.get('note') or '')}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>No findings.</p>")
    out.append("<h2>Conclusion</h2>")
    out.append(f"<p>{escape(details.get('conclusion') or '—')}</p>")
    if study["signed"]:
        signer = details.get("signer") or {}
        when = datetime.fromisoformat(details["signed_at"]).strftime("%Y-%m-%d %H:%M UTC")
        who = signer.get("name") or signer.get("key") or "—"
        out.append(f"<div class='signature'>Electronically signed by <b>{escape(str(who))}</b> "
                   f"on {when}</div>")  # fmt: skip
    out.append("</body></html>")
    return "".join(out)


def render_report(material: dict[str, Any]) -> bytes:
    from weasyprint import HTML

    pdf: bytes = HTML(string=report_html(material)).write_pdf()
    return pdf
