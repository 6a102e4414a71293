"""Structured fields from the transcript: an allergen said in French is an allergy, not a
medication, and the substance stops where the clause does."""

from __future__ import annotations

import pytest

from iatros.clinical.scribe.extraction import extract
from iatros.clinical.scribe.transcript import from_text

CASES = [
    ("[patient] je suis allergique à la pénicilline", [], ["pénicilline"]),
    (
        "[patient] I am allergic to penicillin but I take amoxicillin 500 mg twice a day",
        ["amoxicillin"],
        ["penicillin"],
    ),
    (
        "[patient] allergique à l'amoxicilline et je prends du paracétamol 1 g le soir",
        ["paracetamol"],
        ["amoxicilline"],
    ),
    ("[patient] allergic to latex gloves", [], ["latex gloves"]),
]


@pytest.mark.parametrize(("text", "medications", "allergies"), CASES)
def test_allergens_are_not_medications(
    text: str, medications: list[str], allergies: list[str]
) -> None:
    found = extract(from_text(text))
    assert [m["name"] for m in found["medications"]] == medications
    assert [a["substance"] for a in found["allergies"]] == allergies


def test_a_medication_taken_keeps_its_dose_and_frequency() -> None:
    text = "[patient] I take amoxicillin 500 mg twice a day, allergic to codeine"
    found = extract(from_text(text))
    (med,) = found["medications"]
    assert med["name"] == "amoxicillin" and med["dose"] == {"value": 500.0, "unit": "mg"}
    assert med["frequency"] == "twice a day"
    assert [a["substance"] for a in found["allergies"]] == ["codeine"]
