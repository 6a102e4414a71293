"""Structured fields from the transcript: medications, allergies, vitals, teeth (FDI).

Rules, not a model: each field keeps the transcript lines it was read from, so a person
can check it, and the rules are the same whichever model drafts the prose. Drug names
come from the cache guard's clinical vocabulary (generic, brand and French names and
drug-class suffixes), so one list serves both.
"""

from __future__ import annotations

import re
from typing import Any

from iatros.cache.guard import signature
from iatros.clinical.scribe.numbers import digits
from iatros.clinical.scribe.transcript import Line

_DOSE = re.compile(
    r"\b(\d+(?:\.\d+)?)\s*(mg|milligrams?|milligrammes?|mcg|micrograms?|g|grams?|grammes?"
    r"|ml|milliliters?|millilitres?|units?|unités?|puffs?|tablets?|comprimés?)\b",
    re.IGNORECASE,
)
_UNIT = {"milligram": "mg", "milligramme": "mg", "microgram": "mcg", "gram": "g", "gramme": "g",
         "milliliter": "mL", "millilitre": "mL", "ml": "mL", "unit": "units", "unité": "units",
         "tablet": "tablets", "comprimé": "tablets", "puff": "puffs"}  # fmt: skip
_ROUTES = (
    (
        re.compile(r"\b(by mouth|orally|oral|po|per os|par voie orale|par la bouche)\b", re.I),
        "oral",
    ),
    (re.compile(r"\b(intravenous(ly)?|iv)\b", re.I), "intravenous"),
    (re.compile(r"\b(intramuscular(ly)?|im|injection)\b", re.I), "intramuscular"),
    (re.compile(r"\b(topical(ly)?|cream|ointment|gel|crème|pommade)\b", re.I), "topical"),
    (re.compile(r"\b(inhaler|inhaled|puffs?|inhalé)\b", re.I), "inhaled"),
    (re.compile(r"\b(mouthwash|rinse|bain de bouche)\b", re.I), "oromucosal"),
)
_FREQUENCY = re.compile(
    r"\b(once|twice|three times|four times|\d+ times|1 time|2 times|3 times|4 times)"
    r"\s+(?:a|per|each)\s+(day|daily|week)\b|\b(once daily|daily|every day|every morning|"
    r"every night|at night|at bedtime|as needed|prn|bid|tid|qid|qd|every \d+ hours?|"
    r"\d+ fois par jour|une fois par jour|deux fois par jour|trois fois par jour|le soir|"
    r"le matin|si besoin|toutes les \d+ heures)\b",
    re.IGNORECASE,
)
_ALLERGY = re.compile(
    r"\b(?:allergic to|allergy to|allergies to|allergique (?:à|au|aux) (?:la |l')?)"
    # The substance: one word, or two ("latex gloves") unless the second joins a clause.
    r"\s*([a-zé\-]+(?: (?!(?:but|and|or|so|because|since|which|mais|et|ou|donc|car|qui)\b)"
    r"[a-zé\-]+)?)",
    re.IGNORECASE,
)
_NO_ALLERGY = re.compile(
    r"\b(no known (?:drug )?allergies|no allergies|nkda|pas d'allergie|aucune allergie)\b", re.I
)
_VITALS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("blood_pressure", re.compile(
        r"\b(?:blood pressure|bp|tension)\D{0,30}?(\d{2,3})\s*(?:/|over|sur)\s*(\d{2,3})", re.I
    ), "mm[Hg]"),
    ("heart_rate", re.compile(
        r"\b(?:heart rate|pulse|pouls|fréquence cardiaque)\D{0,20}?(\d{2,3})\b", re.I), "/min"),
    ("temperature", re.compile(
        r"\b(?:temperature|temp|température)\D{0,20}?(\d{2,3}(?:\.\d)?)\b", re.I), "Cel"),
    ("oxygen_saturation", re.compile(
        r"\b(?:oxygen saturation|saturation|o2 sat|sats?|spo2)\D{0,20}?(\d{2,3})\s*(?:%|percent)?",
        re.I), "%"),
    ("respiratory_rate", re.compile(
        r"\b(?:respiratory rate|respirations|fréquence respiratoire)\D{0,20}?(\d{1,2})\b", re.I),
     "/min"),
    ("weight", re.compile(r"\b(?:weigh[st]?|weight|poids)\D{0,20}?(\d{2,3}(?:\.\d)?)\s*"
                          r"(kg|kilograms?|kilos?|pounds|lbs)\b", re.I), "kg"),
)  # fmt: skip
_TOOTH = re.compile(
    r"\b(?:tooth|teeth|dent|dents|molar|premolar|incisor|canine|#)\s*(?:number|numéro|n°|no\.?)?"
    r"\s*(\d{2})(?:\s*(?:,|and|et|&)\s*(\d{2}))?",
    re.IGNORECASE,
)


def valid_fdi(number: int) -> bool:
    """FDI two-digit notation: quadrant 1-4 with teeth 1-8, primary 5-8 with teeth 1-5."""
    quadrant, tooth = divmod(number, 10)
    return (1 <= quadrant <= 4 and 1 <= tooth <= 8) or (5 <= quadrant <= 8 and 1 <= tooth <= 5)


def _unit(raw: str) -> str:
    word = raw.lower().rstrip("s") if raw.lower() not in ("mg", "mcg", "g", "ml") else raw.lower()
    return _UNIT.get(word, word)


def extract(lines: list[Line]) -> dict[str, Any]:
    meds: dict[str, dict[str, Any]] = {}
    allergies: dict[str, dict[str, Any]] = {}
    vitals: dict[str, dict[str, Any]] = {}
    teeth: dict[int, dict[str, Any]] = {}
    for line in lines:
        text = digits(line.text)
        allergic = " ".join(m.group(0) for m in _ALLERGY.finditer(text))
        # Compared as the guard's canonical names: "allergique à la pénicilline" names
        # penicillin too, though the spellings differ.
        allergens = set(signature(allergic).drugs) if allergic else set()
        for drug in signature(text).drugs:
            if drug in allergens:
                continue  # "allergic to penicillin" is an allergy, not a medication
            med = meds.setdefault(
                drug, {"name": drug, "dose": None, "route": None, "frequency": None, "lines": []}
            )
            med["lines"].append(line.n)
            if med["dose"] is None and (dose := _DOSE.search(text)):
                med["dose"] = {"value": float(dose.group(1)), "unit": _unit(dose.group(2))}
            if med["route"] is None:
                med["route"] = next((name for rx, name in _ROUTES if rx.search(text)), None)
            if med["frequency"] is None and (freq := _FREQUENCY.search(text)):
                med["frequency"] = freq.group(0).lower()
        if _NO_ALLERGY.search(text):
            allergies.setdefault("none known", {"substance": "none known", "lines": []})
            allergies["none known"]["lines"].append(line.n)
        for match in _ALLERGY.finditer(text):
            substance = match.group(1).lower().strip()
            entry = allergies.setdefault(substance, {"substance": substance, "lines": []})
            entry["lines"].append(line.n)
        for name, pattern, unit in _VITALS:
            if name in vitals or not (found := pattern.search(text)):
                continue
            if name == "blood_pressure":
                value: Any = {"systolic": int(found.group(1)), "diastolic": int(found.group(2))}
            else:
                value = float(found.group(1))
                if name == "weight" and found.group(2).lower() in ("pounds", "lbs"):
                    value = round(value * 0.45359237, 1)
                if name == "temperature" and value > 50:  # Fahrenheit
                    value = round((value - 32) * 5 / 9, 1)
            vitals[name] = {"name": name, "value": value, "unit": unit, "lines": [line.n]}
        for match in _TOOTH.finditer(text):
            for group in match.groups():
                if group and valid_fdi(int(group)):
                    entry = teeth.setdefault(int(group), {"fdi": int(group), "lines": []})
                    if line.n not in entry["lines"]:
                        entry["lines"].append(line.n)
    return {
        "medications": list(meds.values()),
        "allergies": list(allergies.values()),
        "vitals": list(vitals.values()),
        "teeth": [teeth[k] for k in sorted(teeth)],
    }
