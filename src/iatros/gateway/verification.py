"""The faithfulness check: are a grounded answer's decisive details in its sources?

A retrieval score says the sources are *about* the question; it says nothing about whether
the model's answer repeats them faithfully. A 270M model given "1350-1500 ppm fluoride"
can still answer "500-1280 ppm [1]". For a clinical assistant that is the worst failure:
a wrong number with a citation beside it. This module checks every sentence of the answer
for the details that decide a clinical answer, with the same vocabulary the semantic
cache's clinical guard uses (:func:`iatros.cache.guard.signature`: numbers with units,
drug names, laterality, negations, in English and French), so the two never disagree on
what a "decisive detail" is:

``number``
    every number in the sentence (doses, concentrations, durations, frequencies, ages,
    weights, lab values, tooth numbers) must appear in the sources with the same value and
    a compatible unit (``0.5 g`` is ``500 mg``; ``2 weeks`` is ``14 days``; a unit the
    guard does not know, such as ``ppm``, must be spelled the same).
``drug``
    every drug named must be named in the sources.
``laterality``
    every side (left/right, upper/lower…) must be in the sources.
``negation``
    the sentence of the sources that says the same thing (most content words in common)
    must carry a negation exactly when the answer's sentence does.

Details that repeat the question are supported by it (the asker said so). A detail is
looked for first in the sources the sentence cites (``[n]``), then in the other sources
(small models mis-number citations; the detail is still in what they were given). The
check is deterministic and cheap (microseconds per sentence): it runs on every grounded
answer, and on streams sentence by sentence (:class:`SentenceGate`) so that a client never
receives a sentence with an unverified detail.

It does not understand the answer: a sentence with no decisive detail passes, and a true
statement phrased with details absent from the sources is flagged (which is what we
want in a clinical setting: such a statement is not grounded). Measured precision and
recall are in ``bench/results/faithfulness.json`` (``bench/faithfulness_bench.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from iatros.cache.guard import Signature, normalize_text, signature

Policy = Literal["withhold", "flag", "off"]
Kind = Literal["number", "drug", "laterality", "negation"]

_CITATION = re.compile(r"\s*\[(\d{1,3})\]")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=\S)|\n+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
_WORD = re.compile(r"[a-z]{3,}")
# Words that carry no meaning for aligning an answer sentence with a source sentence.
_STOP = frozenset(
    {
        "the",
        "and",
        "for",
        "with",
        "that",
        "this",
        "from",
        "are",
        "was",
        "were",
        "has",
        "have",
        "had",
        "been",
        "should",
        "can",
        "may",
        "might",
        "must",
        "will",
        "would",
        "into",
        "than",
        "then",
        "them",
        "they",
        "their",
        "there",
        "these",
        "those",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "why",
        "how",
        "its",
        "his",
        "her",
        "our",
        "your",
        "you",
        "also",
        "only",
        "very",
        "more",
        "most",
        "such",
        "other",
        "some",
        "any",
        "all",
        "each",
        "per",
        "les",
        "des",
        "une",
        "est",
        "sont",
        "dans",
        "pour",
        "par",
        "avec",
        "que",
        "qui",
        "sur",
        "aux",
        "du",
        "de",
        "la",
        "le",
        "pas",
        "not",
        "never",
        "without",
        "sans",
        "jamais",
        "aucun",
        "aucune",
        "none",
        "nor",
        "neither",
    }
)
# Units the guard does not canonicalise but that must not be confused with each other.
_RAW_UNIT = re.compile(
    r"(?<![\d.,])(\d+(?:[.,]\d+)?)\s*(ppm|ppb|meq|mosm|nmol|umol|pmol|bpm|kcal|gy|msv|mbq)\b"
)
# Conversions to one unit per dimension; months and years are not exact in days: absent.
_SCALE: dict[str, tuple[str, float]] = {
    "mcg": ("mass", 0.001), "mg": ("mass", 1.0), "g": ("mass", 1000.0), "kg": ("mass", 1e6),
    "ml": ("volume", 1.0), "l": ("volume", 1000.0),
    "second": ("time", 1 / 3600), "minute": ("time", 1 / 60), "hour": ("time", 1.0),
    "day": ("time", 24.0), "week": ("time", 168.0),
    "mm": ("length", 1.0), "cm": ("length", 10.0),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Detail:
    """One decisive detail of an answer sentence, and where it was (or was not) found."""

    kind: Kind
    value: str
    sentence: str
    supported: bool
    source: int | None = None
    """The 1-based source number it was found in (``0``: the question)."""
    evidence: str = ""
    """The source sentence it was checked against (verbatim), when there is one."""

    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.value,
            "sentence": self.sentence,
            "source": self.source,
            "evidence": self.evidence,
        }


@dataclass(slots=True)
class Verification:
    """The outcome of the check for one answer."""

    details: list[Detail] = field(default_factory=list)
    policy: Policy = "withhold"
    action: Literal["none", "flagged", "withheld"] = "none"

    @property
    def unsupported(self) -> list[Detail]:
        return [d for d in self.details if not d.supported]

    @property
    def supported(self) -> list[Detail]:
        return [d for d in self.details if d.supported]

    @property
    def status(self) -> Literal["supported", "unsupported", "no-details"]:
        if self.unsupported:
            return "unsupported"
        return "supported" if self.details else "no-details"

    def payload(self) -> dict[str, Any]:
        """``iatros.verification``: what a client shows as the trust signal."""
        return {
            "status": self.status,
            "policy": self.policy,
            "action": self.action,
            "supported": [d.payload() for d in self.supported],
            "unsupported": [d.payload() for d in self.unsupported],
        }


# -- sentences and sources ---------------------------------------------------------------


_MARKER_ONLY = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s*$")


def split_sentences(text: str) -> list[str]:
    """Sentences (and list items) of ``text``, stripped; empty pieces and list markers
    (``1.``, ``2)``, ``-``) dropped: a list's numbering is not a detail to verify."""
    out = []
    for piece in _SENTENCE_END.split(text):
        if _MARKER_ONLY.match(piece):
            continue
        piece = _LIST_MARKER.sub("", piece).strip()
        if piece:
            out.append(piece)
    return out


def _cited(sentence: str) -> tuple[str, list[int]]:
    """The sentence without its ``[n]`` markers, and the numbers it cites."""
    cites = [int(m.group(1)) for m in _CITATION.finditer(sentence)]
    return _CITATION.sub("", sentence), cites


def content_words(text: str) -> set[str]:
    """Normalised words of three letters or more, without stop words (EN and FR)."""
    return {w.rstrip("s") for w in _WORD.findall(normalize_text(text)) if w not in _STOP}


def _negated(sig: Signature) -> bool:
    return bool(sig.negation)


@dataclass(slots=True)
class _Sentence:
    text: str
    sig: Signature
    words: set[str]
    raw_units: set[str]


def _raw_units(text: str) -> set[str]:
    return {f"{n.replace(',', '.')} {u}" for n, u in _RAW_UNIT.findall(normalize_text(text))}


def _prepare(text: str) -> _Sentence:
    return _Sentence(text, signature(text), content_words(text), _raw_units(text))


class Sources:
    """The passages an answer was grounded on, split into sentences once."""

    def __init__(self, passages: Sequence[str], question: str) -> None:
        self.passages = [[_prepare(s) for s in split_sentences(p)] for p in passages]
        self.question = _prepare(question) if question.strip() else None

    def order(self, cites: Iterable[int]) -> list[int]:
        """Source numbers to search: the cited ones first, then the others."""
        cited = [n for n in dict.fromkeys(cites) if 1 <= n <= len(self.passages)]
        rest = [n for n in range(1, len(self.passages) + 1) if n not in cited]
        return cited + rest


# -- numbers ------------------------------------------------------------------------------


def _parse_number(value: str) -> tuple[set[float], str]:
    """A guard number (``"500 mg/kg"``, ``"1.500"``, ``"#2"``) as candidate values and unit."""
    head, _, unit = value.partition(" ")
    head = head.lstrip("#")
    if "/" in head:  # a ratio such as a blood pressure: compare as written
        return set(), value
    try:
        number = float(head)
    except ValueError:
        return set(), value
    values = {number}
    # "1.500" or "1,500" may be a thousand and five hundred written with a separator.
    if re.fullmatch(r"\d{1,3}\.\d{3}", head):
        values.add(float(head.replace(".", "")))
    return values, unit


def _in_base_unit(values: set[float], unit: str) -> tuple[set[float], str]:
    first, _, rest = unit.partition("/")
    scale = _SCALE.get(first)
    if scale is None:
        return values, unit
    dimension, factor = scale
    return {round(v * factor, 9) for v in values}, f"{dimension}/{rest}" if rest else dimension


def _number_matches(answer: str, source: str) -> bool:
    if answer == source:
        return True
    a_values, a_unit = _parse_number(answer)
    s_values, s_unit = _parse_number(source)
    if not a_values or not s_values:
        return False
    if not a_unit:  # a bare number in the answer: any source unit, same value
        return bool(a_values & s_values)
    a_values, a_unit = _in_base_unit(a_values, a_unit)
    s_values, s_unit = _in_base_unit(s_values, s_unit)
    return a_unit == s_unit and bool(a_values & s_values)


# -- the check -------------------------------------------------------------------------------


def _find(
    kind: Kind, value: str, sources: Sources, order: list[int], raw: set[str]
) -> tuple[int | None, str]:
    """The source (and its sentence) that holds ``value``; ``(None, "")`` when none does."""

    def holds(sentence: _Sentence) -> bool:
        if kind == "number":
            if raw and not (raw & sentence.raw_units):
                return False
            return any(_number_matches(value, n) for n in sentence.sig.numbers)
        if kind == "drug":
            return value in sentence.sig.drugs
        return value in sentence.sig.laterality

    if sources.question is not None and holds(sources.question):
        return 0, ""
    for n in order:
        for sentence in sources.passages[n - 1]:
            if holds(sentence):
                return n, sentence.text
    return None, ""


def _raw_for(value: str, raw_units: set[str]) -> set[str]:
    """The raw-unit spellings (``"1350 ppm"``) of a bare number of the answer."""
    head = value.partition(" ")[0]
    return {r for r in raw_units if r.partition(" ")[0] == head}


def _negation_detail(sentence: _Sentence, text: str, sources: Sources, order: list[int]) -> Detail:
    """Compare the polarity of ``sentence`` with the source sentence that says the same."""
    best: tuple[float, int, _Sentence | None] = (0.0, 0, None)
    for n in order:
        for candidate in sources.passages[n - 1]:
            shared = len(sentence.words & candidate.words)
            score = shared / max(1, len(sentence.words))
            if shared >= 3 and score > best[0]:
                best = (score, n, candidate)
    score, n, match = best
    if match is None or score < 0.5:  # no source sentence says the same thing: cannot tell
        return Detail("negation", "none", text, True)
    mine, theirs = _negated(sentence.sig), _negated(match.sig)
    if not (mine or theirs):  # both affirm: nothing decisive to report
        return Detail("negation", "none", text, True)
    value = "negated" if mine else "affirmed"
    return Detail("negation", value, text, mine == theirs, n, match.text)


def verify(answer: str, passages: Sequence[str], question: str = "") -> list[Detail]:
    """Every decisive detail of ``answer`` with whether ``passages`` support it."""
    sources = Sources(passages, question)
    details: list[Detail] = []
    for raw_sentence in split_sentences(answer):
        text, cites = _cited(raw_sentence)
        sentence = _prepare(text)
        order = sources.order(cites)
        checks: list[tuple[Kind, str]] = [
            *(("number", v) for v in sentence.sig.numbers),
            *(("drug", v) for v in sentence.sig.drugs),
            *(("laterality", v) for v in sentence.sig.laterality),
        ]
        for kind, value in checks:
            raw = _raw_for(value, sentence.raw_units) if kind == "number" else set()
            where, evidence = _find(kind, value, sources, order, raw)
            details.append(Detail(kind, value, text, where is not None, where, evidence))
        if sentence.words:
            negation = _negation_detail(sentence, text, sources, order)
            if negation.value != "none":
                details.append(negation)
    return details


def check(answer: str, passages: Sequence[str], question: str, policy: Policy) -> Verification:
    """:func:`verify`, with the action ``policy`` implies."""
    result = Verification(verify(answer, passages, question), policy)
    if result.unsupported and policy != "off":
        result.action = "withheld" if policy == "withhold" else "flagged"
    return result
