"""Link each note statement to the transcript lines that support it.

A statement is supported by a line when enough of its content words (stemmed, numbers
normalised, stop words and filler left out) appear in it. The model's own citations
(``[3, 5]`` or ``[L3]``) are kept when the cited line really shares content words with
the statement, and lines are found by overlap otherwise. A statement no line supports is
flagged ``unsupported``: the clinician sees it before signing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from iatros.clinical.scribe.numbers import digits
from iatros.clinical.scribe.transcript import Line

MIN_SUPPORT = 0.5
"""Share of a statement's content words a set of lines must hold to support it."""
MAX_LINES = 4

_CITATION = re.compile(r"\s*\[(?:L|lines?\s*)?(\d+(?:\s*[,;\-\u2013]\s*L?\d+)*)\]", re.IGNORECASE)
_WORD = re.compile(r"[a-zà-ÿ0-9]+(?:\.\d+)?", re.IGNORECASE)
_STOP_WORDS = """
a an the and or but if of to in on at for with from by as is are was were be been being
it its this that these those he she they them his her their patient patients i you we my
your our me us has have had do does did not no yes so very also there here what which
who when will would can could should may might um uh okay ok yeah like just about some
any one le la les un une des du de et ou à au aux en dans par pour sur avec est sont a
ont il elle ils elles je vous nous mon ma mes son sa ses ce cette ces qui que pas ne
"""
_STOP = frozenset(_STOP_WORDS.split())


def content_words(text: str) -> set[str]:
    words = set()
    for word in _WORD.findall(digits(text).lower()):
        if word in _STOP or (len(word) < 2 and not word.isdigit()):
            continue
        words.add(_stem(word))
    return words


def _stem(word: str) -> str:
    if word.isdigit() or len(word) <= 4:
        return word
    for suffix in ("ations", "ation", "ings", "ing", "ness", "ed", "es", "s", "ment"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def citations(text: str) -> tuple[str, list[int]]:
    """The statement without its ``[n]`` citations, and the cited line numbers."""
    cited: list[int] = []
    for match in _CITATION.finditer(text):
        for part in re.split(r"[,;]", match.group(1)):
            bounds = [int(x) for x in re.findall(r"\d+", part)]
            if len(bounds) == 2 and 0 < bounds[1] - bounds[0] <= 20:
                cited.extend(range(bounds[0], bounds[1] + 1))
            else:
                cited.extend(bounds)
    return _CITATION.sub("", text).strip(), cited


def link(text: str, lines: list[Line], cited: Iterable[int] = ()) -> dict[str, Any]:
    """Which lines support ``text``: ``{"lines": [...], "support": 0..1, "unsupported": bool}``."""
    words = content_words(text)
    if not words:
        return {"lines": [], "support": 0.0, "unsupported": True}
    by_n = {line.n: line for line in lines}
    line_words = {line.n: content_words(line.text) for line in lines}
    chosen = [n for n in dict.fromkeys(cited) if n in by_n and words & line_words[n]]
    covered = set().union(*(words & line_words[n] for n in chosen)) if chosen else set()
    # Greedy cover: add the line that adds the most of the statement's words.
    while len(chosen) < MAX_LINES and len(covered) < len(words):
        best, gain = None, 0
        for n, lw in line_words.items():
            if n in chosen:
                continue
            new = len((words & lw) - covered)
            if new > gain:
                best, gain = n, new
        if best is None or gain == 0 or (chosen and gain < 2 and len(words) > 4):
            break
        chosen.append(best)
        covered |= words & line_words[best]
    support = len(covered) / len(words)
    return {
        "lines": sorted(chosen),
        "support": round(support, 3),
        "unsupported": support < MIN_SUPPORT,
    }


def split_statements(text: str) -> list[str]:
    """A section's prose as statements: sentences, bullets and lines."""
    pieces: list[str] = []
    for raw in re.split(r"\n+|(?<=[.!?])\s+(?=[A-ZÀ-Ý\-•*])", text):
        piece = re.sub(r"^\s*(?:[-•*]|\d+[.)])\s*", "", raw).strip()
        if len(piece) > 2:
            pieces.append(piece)
    return pieces
