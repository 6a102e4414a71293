"""Spoken numbers to digits ("five hundred milligrams" → "500 milligrams"), EN and FR.

Transcripts spell numbers out; doses, vitals and tooth numbers are found in digits.
"""

from __future__ import annotations

import re

UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5,
    "sept": 7, "huit": 8, "neuf": 9, "dix": 10, "onze": 11, "douze": 12, "treize": 13,
    "quatorze": 14, "quinze": 15, "seize": 16,
}  # fmt: skip
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90, "vingt": 20, "trente": 30, "quarante": 40, "cinquante": 50,
    "soixante": 60,
}  # fmt: skip
SCALES = {"hundred": 100, "cent": 100, "cents": 100, "thousand": 1000, "mille": 1000}
_WORDS = "|".join(sorted([*UNITS, *TENS, *SCALES], key=len, reverse=True))
_RUN = re.compile(rf"\b(?:{_WORDS})(?:[\s-]+(?:and\s+|et\s+)?(?:{_WORDS}))*\b", re.IGNORECASE)
_POINT = re.compile(r"\b(\d+) point (\d+)\b")


def _value(words: list[str]) -> int | None:
    total, current = 0, 0
    for word in words:
        if word in ("and", "et"):
            continue
        if word in UNITS:
            current += UNITS[word]
        elif word in TENS:
            current += TENS[word]
        elif word in SCALES:
            current = max(current, 1) * SCALES[word]
            if SCALES[word] == 1000:
                total, current = total + current, 0
        else:
            return None
    return total + current


def digits(text: str) -> str:
    """Replace runs of number words by their value; "point" joins decimals."""

    def sub(match: re.Match[str]) -> str:
        words = re.split(r"[\s-]+", match.group(0).lower())
        # "three six" (tooth 36), "one two" are digit sequences, not a sum.
        if len(words) > 1 and all(w in UNITS and UNITS[w] < 10 for w in words):
            return "".join(str(UNITS[w]) for w in words)
        value = _value(words)
        return match.group(0) if value is None else str(value)

    return _POINT.sub(r"\1.\2", _RUN.sub(sub, text))
