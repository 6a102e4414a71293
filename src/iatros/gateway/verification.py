"""The faithfulness check: are a grounded answer's decisive details in its sources?

Why this module is long: it is one judgement (is this sentence stated by the sources?)
made of small rules that read each other's results — sentences and clauses, the binding
of details to one source sentence, number and unit equivalence, negation alignment — and
each rule is tuned against the others on the labelled set; split apart, the rules would
be harder to read together.

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
``population``
    adult, child, pregnant… (a dose for children is not a dose for adults).
``negation``
    the sentence of the sources that says the same thing (most content words in common)
    must carry a negation exactly when the answer's sentence does.

Details are **bound together**: a sentence's details must be stated together by one
source sentence (the one stating most of them; a heading counts for the sentences under
it), since the typical error of a small model is not a value it invented but one it
copied from the neighbouring statement ("paracetamol 10 mg/kg" from a source giving
paracetamol 15 mg/kg and ibuprofen 10 mg/kg). A number is also refused when the source
sentence that says the same thing (most words in common) gives another value of the same
kind ("do not rinse for 48 hours" against "do not rinse for 24 hours", though "48 hours"
is elsewhere). Details that repeat the question are supported by it (the asker said so)
and weigh double in choosing the source sentence ("the maximum dose of *ibuprofen*" must
come from ibuprofen's sentence). Source sentences are looked for first in the sources the
sentence cites (``[n]``), then in the others (small models mis-number citations). The
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
Kind = Literal["number", "drug", "laterality", "population", "negation"]

_CITATION = re.compile(r"\s*\[(\d{1,3})\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
_WORD = re.compile(r"[a-z]{3,}")
# Words that carry no meaning for aligning an answer sentence with a source sentence.
_STOP = frozenset(
    """
    the and for with that this from are was were has have had been should can may might
    must will would into than then them they their there these those which who whom what
    when where why how its his her our your you also only very more most such other some
    any all each per les des une est sont dans pour par avec que qui sur aux du de la le
    pas not never without sans jamais aucun aucune none nor neither
    """.split()  # noqa: SIM905 - a word list reads best as words
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
    pieces = _SENTENCE_END.split(text)
    for i, piece in enumerate(pieces):
        if _MARKER_ONLY.match(piece) and i < len(pieces) - 1:  # the last one is an answer: "10."
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


_ANSWER_WORD = re.compile(r"^\s*(?:no|non)\s*[,.:;!\u2014-]\s*", re.IGNORECASE)


def _negated(sentence: _Sentence) -> int:
    """How many negations: "not needed ... non-infected" (2) is not "needed ... non-infected"
    (1). A leading "No," / "Non :" answers the question; it is not the sentence's own."""
    sig = sentence.sig
    stripped = _ANSWER_WORD.sub("", sentence.text)
    if stripped != sentence.text:
        sig = _prepare(stripped).sig
    return int(sig.negation[0]) if sig.negation else 0


@dataclass(slots=True)
class _Sentence:
    text: str
    sig: Signature
    words: set[str]
    raw_units: set[str]
    context: Signature | None = None
    """The details of the heading the sentence sits under, if any."""


def _raw_units(text: str) -> set[str]:
    return {f"{n.replace(',', '.')} {u}" for n, u in _RAW_UNIT.findall(normalize_text(text))}


# Phrases that state a maximum with a negation word: "not more than 60 mg" says what
# "a maximum of 60 mg" says, and neither is a negated statement.
_MAXIMUM = re.compile(
    r"\b(?:not|no|never)\s+(?:more|higher|greater)\s+than\b|\bnot\s+(?:to\s+)?exceed\w*"
    r"|\bwithout\s+exceeding\b|\bdo\s+not\s+exceed\b|\b(?:pas|jamais)\s+plus\s+de\b"
    r"|\bne\s+(?:pas\s+)?depass\w*(?:\s+pas)?\b|\bsans\s+depasser\b"
)


def _prepare(text: str) -> _Sentence:
    plain = _MAXIMUM.sub("maximum", normalize_text(text))
    return _Sentence(text, signature(plain), content_words(plain), _raw_units(plain))


_SOURCE_END = _SENTENCE_END
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+.*|[^.!?]{1,80}:)\s*$")


def source_sentences(passage: str) -> list[_Sentence]:
    """A passage's sentences (not cut at ``;``: a dose and its frequency often share one),
    each with the details of the heading above it ("## Paracetamol" then "15 mg/kg every
    6 hours." says the dose is paracetamol's)."""
    out: list[_Sentence] = []
    heading: Signature | None = None
    for piece in _SOURCE_END.split(passage):
        if _MARKER_ONLY.match(piece) or not piece.strip():
            continue
        text = _LIST_MARKER.sub("", piece).strip()
        sentence = _prepare(text)
        if heading is not None:
            sentence.context = heading
        if _HEADING.match(piece):
            heading = sentence.sig
        out.append(sentence)
    return out


class Sources:
    """The passages an answer was grounded on, split into sentences once."""

    def __init__(self, passages: Sequence[str], question: str) -> None:
        self.passages = [source_sentences(p) for p in passages]
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


def _holds(sentence: _Sentence, kind: Kind, value: str, raw: set[str]) -> bool:
    """Whether ``sentence`` (or the heading it sits under) states this detail."""
    sigs = (sentence.sig,) if sentence.context is None else (sentence.sig, sentence.context)
    if kind == "number":
        if raw and not (raw & sentence.raw_units):
            return False
        return any(_number_matches(value, n) for sig in sigs for n in sig.numbers)
    if kind == "drug":
        return any(value in sig.drugs for sig in sigs)
    if kind == "population":
        return any(value in sig.population for sig in sigs)
    return any(value in sig.laterality for sig in sigs)


Check = tuple[Kind, str, frozenset[str]]
"""A detail to find: kind, canonical value, raw-unit spellings of a bare number."""


def _supporting(
    checks: list[Check], asked: set[int], sources: Sources, order: list[int]
) -> tuple[int | None, _Sentence | None, set[int]]:
    """The source sentence stating the most of ``checks`` together, and which it states.

    Details are bound to each other: "paracetamol 10 mg/kg every 6 hours" is not supported
    by a source giving paracetamol 15 mg/kg and ibuprofen 10 mg/kg, though each value is
    in it somewhere. Details the question names (``asked``) count twice: they say what the
    sentence is about ("the maximum dose of *ibuprofen*" must come from ibuprofen's
    sentence). On a tie, the cited sources win.
    """
    best: tuple[int, int | None, _Sentence | None, set[int]] = (0, None, None, set())
    for n in order:  # cited sources first: on a tie, the first found stays
        for sentence in sources.passages[n - 1]:
            held = {i for i, (k, v, raw) in enumerate(checks) if _holds(sentence, k, v, set(raw))}
            score = len(held) + len(held & asked)
            if score > best[0]:
                best = (score, n, sentence, held)
    return best[1], best[2], best[3]


def _raw_for(value: str, raw_units: set[str]) -> set[str]:
    """The raw-unit spellings (``"1350 ppm"``) of a bare number of the answer."""
    head = value.partition(" ")[0]
    return {r for r in raw_units if r.partition(" ")[0] == head}


def _aligned(
    sentence: _Sentence, sources: Sources, order: list[int]
) -> tuple[float, int, _Sentence | None]:
    """The source sentence that says the same thing (most content words in common)."""
    best: tuple[float, int, _Sentence | None] = (0.0, 0, None)
    for n in order:
        for candidate in sources.passages[n - 1]:
            shared = len(sentence.words & candidate.words)
            score = shared / max(1, len(sentence.words))
            if shared >= 3 and score > best[0]:
                best = (score, n, candidate)
    return best


def _dimension(value: str) -> str | None:
    """The dimension of a guard number (``"48 hour"`` → ``time``); None for bare numbers."""
    values, unit = _parse_number(value)
    if not values or not unit:
        return None
    return _in_base_unit(values, unit)[1]


def _contradicted(value: str, aligned: _Sentence) -> bool:
    """Whether the sentence that says the same thing gives another value of the same kind
    ("do not rinse for 48 hours" against "do not rinse for 24 hours"), though the value
    is stated elsewhere in the sources ("do not smoke for 48 hours")."""
    dimension = _dimension(value)
    if dimension is None:
        return False
    same_kind = [n for n in aligned.sig.numbers if _dimension(n) == dimension]
    return bool(same_kind) and not any(_number_matches(value, n) for n in same_kind)


def _negation_detail(sentence: _Sentence, text: str, sources: Sources, order: list[int]) -> Detail:
    """Compare the polarity of ``sentence`` with the source sentence that says the same."""
    score, n, match = _aligned(sentence, sources, order)
    if match is None or score < 0.5:  # no source sentence says the same thing: cannot tell
        return Detail("negation", "none", text, True)
    mine, theirs = _negated(sentence), _negated(match)
    if not (mine or theirs):  # both affirm: nothing decisive to report
        return Detail("negation", "none", text, True)
    value = "negated" if mine else "affirmed"
    return Detail("negation", value, text, mine == theirs, n, match.text)


_CLAUSE = re.compile(r"\s*[;,:]\s+|\s+(?:and|et|while|whereas|but|mais|or|ou)\s+")
_OPPOSITES = ({"left", "right"}, {"upper", "lower"}, {"anterior", "posterior"})


def _enumerates(sig: Signature) -> bool:
    """Whether a sentence lists several cases of one kind ("quadrant 3 the lower left and
    quadrant 4 the lower right"; "ibuprofen …; paracetamol …"): there, details of one case
    can all be in the sentence while belonging to different cases."""
    sides = set(sig.laterality)
    if any(pair <= sides for pair in _OPPOSITES) or len(sig.drugs) >= 2:
        return True
    units = [_parse_number(n)[1] for n in sig.numbers if not n.startswith("#")]
    return len(units) != len(set(units))


def _clause_conflicts(text: str, source: _Sentence) -> set[tuple[str, str]]:
    """The answer's details that are in an enumerating ``source`` sentence, but never in
    the same clause as the rest of their clause's details."""
    source_clauses = [_prepare(c) for c in _CLAUSE.split(source.text) if c.strip()]
    conflicts: set[tuple[str, str]] = set()
    for piece in _CLAUSE.split(text):
        clause = _prepare(piece) if piece.strip() else None
        if clause is None:
            continue
        wanted: list[Check] = [
            *(("number", v, frozenset()) for v in clause.sig.numbers),
            *(("drug", v, frozenset()) for v in clause.sig.drugs),
            *(("laterality", v, frozenset()) for v in clause.sig.laterality),
        ]
        if len(wanted) < 2:
            continue
        best: set[int] = set()
        for candidate in source_clauses:
            held = {i for i, (k, v, _) in enumerate(wanted) if _holds(candidate, k, v, set())}
            if len(held) > len(best):
                best = held
        conflicts.update((k, v) for i, (k, v, _) in enumerate(wanted) if i not in best)
    return conflicts


def _sentence_details(
    sentence: _Sentence, text: str, sources: Sources, order: list[int]
) -> list[Detail]:
    """The number, drug, side and population details of one answer sentence, each judged
    against the source sentence that states most of them together (:func:`_supporting`)."""
    pending: list[Check] = []
    asked: set[int] = set()  # details the question states too
    sig = sentence.sig
    kinds: tuple[tuple[Kind, tuple[str, ...]], ...] = (
        ("number", sig.numbers),
        ("drug", sig.drugs),
        ("laterality", sig.laterality),
        ("population", sig.population),
    )
    for kind, values in kinds:
        for value in values:
            raw = _raw_for(value, sentence.raw_units) if kind == "number" else set()
            if sources.question is not None and _holds(sources.question, kind, value, raw):
                asked.add(len(pending))
            pending.append((kind, value, frozenset(raw)))
    if not pending:
        return []
    where, best, held = _supporting(pending, asked, sources, order)
    score, aligned_n, aligned = _aligned(sentence, sources, order)
    if best is None and aligned is not None:  # nothing holds a detail: quote the closest
        where, best = aligned_n, aligned
    evidence = best.text if best is not None else ""
    if aligned is best or score < 0.6:
        aligned = None
    mixed = _clause_conflicts(text, best) if best is not None and _enumerates(best.sig) else set()
    details = []
    for i, (kind, value, _) in enumerate(pending):
        if i in held and (kind, value) in mixed:  # in the sentence, but in another case's clause
            details.append(Detail(kind, value, text, False, where, evidence))
            continue
        contradicted = (
            aligned is not None
            and kind == "number"
            and i in held
            and i not in asked
            and _contradicted(value, aligned)
        )
        if contradicted:
            assert aligned is not None
            details.append(Detail(kind, value, text, False, aligned_n, aligned.text))
        elif i in held:
            details.append(Detail(kind, value, text, True, where, evidence))
        elif i in asked:  # not in the sources' statement, but the asker said it
            details.append(Detail(kind, value, text, True, 0))
        else:
            details.append(Detail(kind, value, text, False, where, evidence))
    return details


def verify(answer: str, passages: Sequence[str], question: str = "") -> list[Detail]:
    """Every decisive detail of ``answer`` with whether ``passages`` support it."""
    sources = Sources(passages, question)
    details: list[Detail] = []
    for raw_sentence in split_sentences(answer):
        text, cites = _cited(raw_sentence)
        sentence = _prepare(text)
        order = sources.order(cites)
        details.extend(_sentence_details(sentence, text, sources, order))
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
