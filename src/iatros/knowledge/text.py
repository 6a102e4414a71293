"""Small text helpers shared by chunking, the lexical indexes and grounding.

Token counts for chunk sizes use a regex (words and punctuation marks) instead of the
MiniLM tokenizer: about 10x faster, and on PubMedQA abstracts it counts 0.86 of the
MiniLM word pieces (so a 500-token chunk is about 580 word pieces; MiniLM embeds the
first 256 of them, BM25 sees all of it). Lexical terms are lower-cased, accent-folded
alphanumeric runs without EN/FR stop words, so queries and documents always agree
whatever the index engine.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TOKEN = re.compile(r"\w+|[^\w\s]")
_TERM = re.compile(r"[^\W_]+")
_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=[\"'(\[]?[A-ZÀ-Ý0-9])|\n+")
_FR_MARKERS = _wordset(
    "le la les des une est sont pour avec dans sur quel quelle quels quelles qui que quoi "
    "comment pourquoi combien est-ce du au aux ces cette mon ma mes vous nous je il elle "
    "ils elles pas ne peut faut doit entre chez sans très après avant"
)

STOPWORDS = _wordset(
    """a about after again against all also am an and any are as at be because been before
    being between both but by can could did do does doing during each few for from further had
    has have having he her here hers him his how i if in into is it its itself just me more
    most my no nor not of off on once only or other our out over own same she should so some
    such than that the their them then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your
    au aux avec ce ces cette dans de des du elle en et est il ils je la le les leur lui ma mais
    me meme mes moi mon ne nos notre nous on ou par pas pour qu que qui sa se ses son sont sur
    ta te tes toi ton tu un une vos votre vous y d l s n c j m t"""
)


def count_tokens(text: str) -> int:
    """Approximate token count (word and punctuation tokens)."""
    return len(_TOKEN.findall(text))


def fold(text: str) -> str:
    """Lower-case and strip accents ("Médicament" -> "medicament")."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered
    return _COMBINING.sub("", unicodedata.normalize("NFKD", lowered))


def terms(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """The lexical terms of ``text`` (documents and queries alike)."""
    words = _TERM.findall(fold(text))
    if keep_stopwords:
        return [w for w in words if len(w) <= 40]
    return [w for w in words if w not in STOPWORDS and len(w) <= 40]


def sentences(text: str) -> list[str]:
    """Split into sentences (good enough for chunk boundaries and snippets)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def snippet(text: str, query: str, max_chars: int = 300) -> str:
    """The passage's sentences that best match the query, about ``max_chars`` long."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    wanted = set(terms(query))
    parts = sentences(flat)
    if not parts:
        return flat[: max_chars - 1] + "…"
    best, best_score = 0, -1.0
    for i, sentence in enumerate(parts):
        found = set(terms(sentence))
        score = len(found & wanted) + (0.01 if i == 0 else 0.0)
        if score > best_score:
            best, best_score = i, score
    out = parts[best]
    j = best + 1
    while j < len(parts) and len(out) + 1 + len(parts[j]) <= max_chars:
        out += " " + parts[j]
        j += 1
    if len(out) > max_chars:
        out = out[: max_chars - 1].rsplit(" ", 1)[0] + "…"
    prefix = "…" if best > 0 else ""
    return prefix + out


def is_french(text: str) -> bool:
    """A cheap language guess for choosing the FR refusal text."""
    words = re.findall(r"[a-zà-ÿ'-]+", text.lower())
    if not words:
        return False
    hits = sum(1 for w in words if w in _FR_MARKERS or w.startswith(("qu'", "l'", "d'", "j'")))
    accents = sum(1 for c in text if c in "éèêàâçôûîùœ")
    return hits / len(words) >= 0.2 or (hits >= 1 and accents >= 1)


def join_nonempty(parts: Iterable[str | None], sep: str = " > ") -> str:
    return sep.join(p for p in parts if p)
