"""The faithfulness triples: question, passages, answer, label.

Two sources, built the same way each time (deterministic, no model, milliseconds):

``practice``
    twelve short practice documents written for this set (``docs/*.md``: eight in English,
    four in French; fluoride by age, paediatric analgesics, antibiotics, local anaesthetic
    maximum doses, prophylaxis, extraction aftercare, FDI tooth numbers, anticoagulants) and
    the answers hand-written for them in ``practice_items.yaml``: extractive answers,
    paraphrases (units converted, numbers in words, clauses reordered) and answers with
    exactly one decisive detail changed. Each answer is checked against two passages, its
    document and another document of the same language (what a top-2 retrieval hands
    the model: the second source is noise with its own numbers).
``pubmedqa``
    abstracts from ``../shared/data/pubmedqa`` (read in place, never copied), with answers
    made by rules from one of their sentences: the sentence itself (correct), the sentence
    with a unit converted or a number written out (paraphrase), and the sentence with one
    number changed to a value the abstract does not hold, its unit changed, its negation
    dropped, its side swapped or its drug replaced (wrong). Skipped when the data is absent.

Labels are ``correct`` or ``wrong:<kind>``; ``style`` says how a correct answer was made
(``extractive`` / ``paraphrase``); ``swap`` marks a wrong value that appears elsewhere in the
passages (the model copied the neighbouring row), the hardest case for a checker that
looks details up anywhere in the sources.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from iatros.cache.guard import signature

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
ITEMS = HERE / "practice_items.yaml"
PUBMEDQA = HERE.parents[3] / "shared" / "data" / "pubmedqa"
"""``/work/shared/data/pubmedqa`` next to the checkout (``../shared`` from the repository)."""


@dataclass(frozen=True, slots=True)
class Triple:
    """One grounded answer to check, and what the check should say about it."""

    id: str
    source: str  # "practice" or "pubmedqa"
    lang: str  # "en" or "fr"
    question: str
    passages: tuple[str, ...]
    answer: str
    label: str  # "correct" or "wrong:<kind>"
    style: str = "extractive"  # correct answers: "extractive" or "paraphrase"
    swap: bool = False  # wrong answers: the wrong value is elsewhere in the passages

    @property
    def wrong(self) -> bool:
        return self.label.startswith("wrong:")

    @property
    def kind(self) -> str:
        return self.label.partition(":")[2] if self.wrong else "correct"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- practice documents ------------------------------------------------------------------


def practice_documents() -> dict[str, str]:
    """``{name: body}``: each document without its Markdown title, one sentence a line."""
    docs = {}
    for path in sorted(DOCS.glob("*.md")):
        lines = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
        docs[path.stem] = "\n".join(line for line in lines if not line.startswith("#"))
    return docs


def _distractor(name: str, names: list[str]) -> str:
    """The next document of the same language (cyclically): a fixed, plausible 2nd source."""
    same = [n for n in names if n[:2] == name[:2]]
    return same[(same.index(name) + 1) % len(same)]


def practice_triples() -> list[Triple]:
    docs = practice_documents()
    names = sorted(docs)
    items: dict[str, list[dict[str, Any]]] = yaml.safe_load(ITEMS.read_text("utf-8"))
    triples = []
    for name, questions in items.items():
        passages = (docs[name], docs[_distractor(name, names)])
        for qn, item in enumerate(questions, 1):
            for an, entry in enumerate(item["a"], 1):
                label, text = entry
                style = "paraphrase" if label == "paraphrase" else "extractive"
                triples.append(
                    Triple(
                        id=f"{name}/{qn}.{an}",
                        source="practice",
                        lang=name[:2],
                        question=item["q"],
                        passages=passages,
                        answer=text,
                        label="correct" if label == "paraphrase" else label,
                        style=style,
                        swap=label.startswith("wrong:")
                        and label != "wrong:negation"
                        and _all_present(text, passages, item["q"]),
                    )
                )
    return triples


# -- PubMedQA: answers made by rules from the abstracts' sentences -------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_QUANTITY = re.compile(
    r"(?<![\w.,/])(\d+(?:\.\d+)?)\s?(mg/kg|mg|g|ml|%|days?|weeks?|months?|years?|hours?)(?![\w/])"
)
_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")
_NEGATIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bdid not\b"), "did"),
    (
        re.compile(r"\b(was|were|is|are|has|have|had|could|can|does|do|may|might|should)\s+not\b"),
        r"\1",
    ),
    (re.compile(r"\bnot significantly\b"), "significantly"),
    (re.compile(r"\bno significant\b"), "a significant"),
    (re.compile(r"\bno difference\b"), "a difference"),
    (re.compile(r"\bno (\w+)"), r"some \1"),
    (re.compile(r"\bwithout\b"), "with"),
]
_SIDES = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
_OTHER_UNIT = {
    "mg": "g",
    "g": "mg",
    "mg/kg": "mg",
    "ml": "l",
    "day": "week",
    "days": "weeks",
    "week": "month",
    "weeks": "months",
    "month": "year",
    "months": "years",
    "year": "month",
    "years": "months",
    "hour": "day",
    "hours": "days",
}
_DRUG_POOL = ("warfarin", "metformin", "ibuprofen", "amoxicillin", "lidocaine", "atorvastatin")
_WORDS = {
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    12: "twelve",
}


def _fmt(value: float) -> str:
    return f"{value:g}"


def _numbers_in(text: str) -> set[float]:
    return {float(n.replace(",", ".")) for n in _DIGITS.findall(text)}


def _wrong_number(sentence: str, forbidden: set[float]) -> str | None:
    """The sentence with its first quantity changed to a value nowhere in the sources."""
    match = _QUANTITY.search(sentence)
    if match is None:
        return None
    value = float(match.group(1))
    for candidate in (value * 2, value + 3, value * 3 + 1, value + 17):
        if candidate not in forbidden and candidate != value:
            new = _fmt(candidate)
            return sentence[: match.start(1)] + new + sentence[match.end(1) :]
    return None


def _wrong_unit(sentence: str) -> str | None:
    for match in _QUANTITY.finditer(sentence):
        other = _OTHER_UNIT.get(match.group(2))
        if other is not None:
            return sentence[: match.start(2)] + other + sentence[match.end(2) :]
    return None


def _paraphrase(sentence: str) -> str | None:
    """Reworded without changing a detail: converted units, small numbers in words."""

    def convert(match: re.Match[str]) -> str:
        value, unit = float(match.group(1)), match.group(2)
        if unit == "mg" and value >= 100:
            return f"{_fmt(value / 1000)} g"
        if unit in ("days", "day") and value % 7 == 0:
            return f"{_fmt(value / 7)} weeks"
        if unit in ("weeks", "week"):
            return f"{_fmt(value * 7)} days"
        if unit in ("hours", "hour") and value % 24 == 0:
            return f"{_fmt(value / 24)} days"
        if unit == "%":
            return f"{match.group(1)} percent"
        if unit.startswith(("month", "year", "day")) and value in _WORDS:
            return f"{_WORDS[int(value)]} {unit}"
        return match.group(0)

    out = _QUANTITY.sub(convert, sentence)
    return out if out != sentence else None


def _drop_negation(sentence: str) -> str | None:
    before = len(signature(sentence).negation)
    if not before:
        return None
    for pattern, repl in _NEGATIONS:
        changed = pattern.sub(repl, sentence, count=1)
        if changed != sentence:
            after = signature(changed).negation
            return (
                changed
                if not after or int(after[0]) < int(signature(sentence).negation[0])
                else None
            )
    return None


def _swap_side(sentence: str) -> str | None:
    changed = re.sub(
        r"\b(left|right|Left|Right)\b", lambda m: _SIDES[m.group(1)], sentence, count=1
    )
    return changed if changed != sentence else None


def _swap_drug(sentence: str, abstract_drugs: set[str]) -> str | None:
    drugs = signature(sentence).drugs
    if not drugs:
        return None
    target = drugs[0]
    replacement = next((d for d in _DRUG_POOL if d not in abstract_drugs), None)
    if replacement is None:
        return None
    for word in re.findall(r"[A-Za-z][A-Za-z-]+", sentence):
        if signature(word).drugs == (target,):
            return re.sub(rf"\b{re.escape(word)}\b", replacement, sentence, count=1)
    return None


def _pubmedqa_rows() -> Iterator[tuple[str, str, str]]:
    queries = {}
    with (PUBMEDQA / "queries.jsonl").open() as f:
        for line in f:
            q = json.loads(line)
            queries[q["gold_ids"][0]] = q["question"]
    with (PUBMEDQA / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            if doc["id"] in queries:
                yield doc["id"], queries[doc["id"]], " ".join(doc["text"].split())


def pubmedqa_triples(per_kind: int = 12) -> list[Triple]:
    """Up to ``per_kind`` abstracts for each rule (number, unit, negation, side, drug)."""
    if not (PUBMEDQA / "corpus.jsonl").is_file():
        return []
    quota = {
        "dose": per_kind,
        "unit": per_kind,
        "negation": per_kind,
        "side": per_kind,
        "drug": per_kind,
    }
    triples: list[Triple] = []
    for pmid, question, text in _pubmedqa_rows():
        if not any(quota.values()):
            break
        sig = signature(text)
        forbidden = _numbers_in(text) | _numbers_in(question)
        sentences = [s for s in _SENTENCE.split(text) if 60 <= len(s) <= 320]
        rules: list[tuple[str, Callable[[str], str | None]]] = [
            ("negation", _drop_negation),
            ("side", _swap_side),
            ("drug", functools.partial(_swap_drug, abstract_drugs=set(sig.drugs))),
            ("dose", functools.partial(_wrong_number, forbidden=forbidden)),
            ("unit", _wrong_unit),
        ]
        for kind, rule in rules:
            if not quota[kind]:
                continue
            made = next(((s, w) for s in sentences if (w := rule(s)) is not None), None)
            if made is None:
                continue
            sentence, wrong = made
            quota[kind] -= 1
            base = f"pubmedqa/{pmid}/{kind}"
            swap = _appears_elsewhere(kind, wrong, sentence, text)
            triples.append(
                Triple(
                    f"{base}/c", "pubmedqa", "en", question, (text,), sentence + " [1]", "correct"
                )
            )
            paraphrase = _paraphrase(sentence)
            if paraphrase is not None:
                triples.append(
                    Triple(
                        f"{base}/p",
                        "pubmedqa",
                        "en",
                        question,
                        (text,),
                        paraphrase + " [1]",
                        "correct",
                        "paraphrase",
                    )
                )
            triples.append(
                Triple(
                    f"{base}/w",
                    "pubmedqa",
                    "en",
                    question,
                    (text,),
                    wrong + " [1]",
                    f"wrong:{kind}",
                    swap=swap,
                )
            )
            break  # one rule per abstract: the set spreads over many abstracts
    return triples


def _details(text: str) -> set[tuple[str, str]]:
    sig = signature(text)
    return (
        {("number", n) for n in sig.numbers}
        | {("drug", d) for d in sig.drugs}
        | {("side", s) for s in sig.laterality}
    )


def _all_present(answer: str, passages: tuple[str, ...], question: str) -> bool:
    """Is every number, drug and side of ``answer`` somewhere in the passages or question?

    For a wrong answer this means its wrong value was copied from elsewhere in the
    sources (a "swap"): a checker that looks details up anywhere cannot see it.
    """
    known: set[tuple[str, str]] = set()
    for text in (*passages, question):
        for line in text.splitlines():
            known |= _details(line)
    return _details(answer.replace("[1]", "")) <= known


def _appears_elsewhere(kind: str, wrong: str, sentence: str, text: str) -> bool:
    """Is the changed detail (a side, a drug) present elsewhere in the abstract?"""
    new = signature(wrong)
    old = signature(sentence)
    every = signature(text)
    if kind == "side":
        return bool(set(new.laterality) - set(old.laterality) <= set(every.laterality))
    if kind == "drug":
        return bool(set(new.drugs) - set(old.drugs) <= set(every.drugs))
    return False


def all_triples(pubmedqa: bool = True) -> list[Triple]:
    return practice_triples() + (pubmedqa_triples() if pubmedqa else [])
