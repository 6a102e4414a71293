"""The transcript as numbered lines with speakers: what note statements link to.

From audio, each Whisper segment becomes a line. From text, each non-empty line is one,
and a leading speaker tag is read: ``[doctor]``/``[patient]`` (ACI-Bench), ``Doctor:``,
``Dr:``, ``Patient:``, ``Médecin :``, ``Patient :``.

Speakers in audio are guessed by heuristics (a question or an instruction is the
clinician's, first-person symptoms the patient's); unsure lines keep no speaker rather
than a wrong one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from iatros.providers.transcription import TranscriptResult

_TAG = re.compile(
    r"^\s*(?:\[(?P<b>doctor|patient|clinician|dentist|nurse)\]|"
    r"(?P<c>doctor|dr\.?|patient|clinician|dentist|médecin|medecin|dentiste)\s*:)\s*",
    re.IGNORECASE,
)
_CLINICIAN_CUES = re.compile(
    r"\?$|^(?:so|okay|ok|alright|let's|let me|i'm going to|i will|i'll|we'll|open|take|"
    r"how|what|when|where|do you|does it|have you|any|can you|avez-vous|est-ce que|"
    r"ouvrez|prenez|je vais|on va)\b",
    re.IGNORECASE,
)
_PATIENT_CUES = re.compile(
    r"\b(?:i have|i've had|i feel|it hurts|my|i'm taking|i am|i take|j'ai|je suis|"
    r"ça me fait mal|je prends)\b",
    re.IGNORECASE,
)


@dataclass(slots=True)
class Line:
    n: int
    text: str
    speaker: str | None = None
    start: float | None = None
    end: float | None = None
    low_confidence: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _speaker(tag: str | None) -> str | None:
    if tag is None:
        return None
    return "patient" if tag.lower() == "patient" else "clinician"


def from_text(text: str) -> list[Line]:
    lines: list[Line] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        match = _TAG.match(raw)
        speaker = _speaker((match.group("b") or match.group("c")) if match else None)
        body = raw[match.end() :] if match else raw
        if body.strip():
            lines.append(Line(len(lines) + 1, body.strip(), speaker))
    return lines


def guess_speaker(text: str) -> str | None:
    clinician = bool(_CLINICIAN_CUES.search(text.strip()))
    patient = bool(_PATIENT_CUES.search(text))
    if clinician and not patient:
        return "clinician"
    if patient and not clinician:
        return "patient"
    return None


def from_result(result: TranscriptResult) -> list[Line]:
    return [
        Line(
            i + 1,
            seg.text.strip(),
            guess_speaker(seg.text),
            seg.start,
            seg.end,
            seg.low_confidence,
        )
        for i, seg in enumerate(s for s in result.segments if s.text.strip())
    ]


def from_dicts(items: list[dict[str, Any]]) -> list[Line]:
    return [Line(**item) for item in items]


def render(lines: list[Line], numbered: bool = True) -> str:
    out = []
    for line in lines:
        who = {"clinician": "Clinician", "patient": "Patient"}.get(line.speaker or "", "Speaker")
        out.append(f"L{line.n} {who}: {line.text}" if numbered else f"{who}: {line.text}")
    return "\n".join(out)
