"""Request types for the adaptive TTL: general knowledge, practice information, patient.

A heuristic on the user's words, chosen to err towards the shorter TTL: anything that
looks like it is about one person (a patient id, "my patient", a date of birth, a
named person, "my daughter", "I am pregnant") is ``patient``; questions about the
practice itself (opening hours, prices, appointments, address, staff, contact) are
``practice``; the rest is ``general`` knowledge. English and French.

It runs on every lookup, so it is built to be cheap on long conversations: the text
is split into words once, and a phrase pattern runs only when one of its anchor words
is present (3 kB of text: about 40 us instead of 1 ms for one big regular expression).
Short texts, the repeated questions a cache serves, have their answer remembered under
a digest of the text (the text itself is not kept): a repeat costs about 1 us instead
of about 8 us of matching.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

from iatros.cache.guard import normalize_text
from iatros.cache.model import CacheRequest, RequestType
from iatros.image_parts import has_images

_NOT_WORD = str.maketrans({c: " " for c in '!"#$%&()*+,./:;<=>?@[\\]^`{|}~'})


def _cues(*cues: tuple[str, str | None]) -> list[tuple[frozenset[str], re.Pattern[str] | None]]:
    """(anchor words, phrase pattern or None when an anchor word alone is enough)."""
    return [
        (frozenset(anchors.split()), re.compile(pattern) if pattern else None)
        for anchors, pattern in cues
    ]


_PATIENT = _cues(
    (
        "patient patients",
        r"\b(?:my|our|this|that) patients?\b|\bthe patient(?:'s| is| has| was| had| takes"
        r"| took| presents| reports| complains)\b|\b(?:mon|notre|ce|cet) patient\b"
        r"|\ble patient (?:est|a|prend|presente|se plaint|souffre)\b",
    ),
    ("patiente", r"\b(?:ma|notre|cette) patiente\b|\bla patiente (?:est|a|prend|presente)\b"),
    ("dob mrn ssn nir", None),
    ("birth", r"\bdate of birth\b"),
    ("naissance", r"\bdate de naissance\b"),
    ("ne nee", r"\bnee? le\b"),
    ("born", r"\bborn on\b"),
    ("record", r"\b(?:medical record|record number)\b"),
    ("dossier", r"\bdossier (?:medical|patient|no|n)\b"),
    ("securite", r"\bsecurite sociale\b"),
    ("security", r"\bsocial security\b"),
    (
        "son daughter child kid baby wife husband mother father mom mum dad partner",
        r"\bmy (?:son|daughter|child|kid|baby|wife|husband|mother|father|mom|mum|dad"
        r"|partner)\b",
    ),
    (
        "fils enfant bebe mari pere conjoint compagnon traitement ordonnance resultat bilan",
        r"\bmon (?:fils|enfant|bebe|mari|pere|conjoint|compagnon|traitement|ordonnance"
        r"|resultat|bilan)\b",
    ),
    (
        "fille femme mere conjointe compagne radio",
        r"\bma (?:fille|femme|mere|conjointe"
        r"|compagne|radio)\b",
    ),
    ("resultats medicaments", r"\bmes (?:resultats|medicaments)\b"),
    (
        "am i'm im",
        r"\b(?:i am|i'm|im) (?:pregnant|allergic|taking|on|diabetic|breastfeeding"
        r"|\d+)\b",
    ),
    ("take", r"(?<!can )(?<!should )(?<!could )(?<!may )(?<!do )(?<!shall )\bi take\b"),
    ("took taking prescribed", r"\bi (?:took|have been taking|was prescribed)\b"),
    ("suis", r"\bje suis (?:enceinte|allergique|sous|diabetique)\b"),
    ("prends", r"\bje prends\b"),
    ("pris", r"\bj'ai pris\b"),
    ("prescrit", r"\bon m'a prescrit\b"),
    (
        "prescription treatment medication medications results xray radiograph blood scan x",
        r"\bmy (?:prescription|treatment|medication|medications|results|x ray|xray"
        r"|radiograph|blood test|scan)\b",
    ),
)
# Identifiers in the raw text. Each pattern starts with a literal or a small character
# class, so the regex engine skips ahead instead of trying every position.
_TITLE = re.compile(r"(?:Mr|Mrs|Ms|Miss|Mme|Mlle|M)\.?\s+[A-Z][a-z\u00e0-\u00ff]+")
_NUMBERISH = re.compile(r"[+\d][\d/.+ -]{5,}")
_IDENTIFIER = re.compile(
    r"(?:\+\d{2}|0)\d(?:[ .]?\d{2}){4}"  # phone number
    r"|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"  # date
    r"|\d{6,}"  # record, insurance or phone number
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def _names_someone(text: str) -> bool:
    """A title and a name, a date, a long number, a phone number or an email address."""
    for match in _TITLE.finditer(text):
        if match.start() == 0 or not text[match.start() - 1].isalpha():
            return True
    for match in _NUMBERISH.finditer(text):
        if _IDENTIFIER.search(match.group()):
            return True
    return "@" in text and _EMAIL.search(text) is not None


_PRACTICE = _cues(
    (
        "horaire horaires weekend saturday sunday samedi dimanche vacances holiday holidays"
        " price prices pricing cost costs fee fees quote payment insurance reimburse"
        " reimbursed tarif tarifs prix cout coute couts devis rembourse remboursement"
        " remboursee rembourses mutuelle paiement payer appointment appointments book"
        " booking reschedule cancel availability rdv annuler disponibilite disponibilites"
        " address parking adresse metro hygienist staff team equipe secretaire secretary"
        " receptionist telephone contact email website numero",
        None,
    ),
    ("hours", r"\b(?:opening|office|business|visiting) hours\b"),
    (
        "open closed",
        r"\b(?:are you|is the (?:clinic|practice|office)) (?:open|closed)\b"
        r"|\b(?:open|closed) (?:on|today|tomorrow|during|at)\b",
    ),
    (
        "ouvert ouverte ferme fermee",
        r"\b(?:etes vous|est il|cabinet|clinique) (?:ouvert|ouverte"
        r"|ferme|fermee)\b",
    ),
    ("time", r"\bwhat time\b"),
    ("heure", r"\ba quelle heure\b"),
    ("ferie feries", r"\bjours? feries?\b"),
    ("much", r"\bhow much (?:does|is|do)\b"),
    ("rendez", r"\brendez vous\b"),
    ("where", r"\bwhere (?:is the (?:clinic|practice|office)|are you)\b"),
    ("trouve", r"\bou se trouve\b"),
    ("etes", r"\bou etes vous\b"),
    ("duty", r"\bon duty\b"),
    ("which", r"\bwhich (?:dentist|doctor)\b"),
    ("who", r"\bwho is the\b"),
    ("phone", r"\bphone number\b"),
    ("site", r"\bsite (?:web|internet)\b"),
    ("vitale payant", r"\b(?:carte vitale|tiers payant)\b"),
)


def _matches(
    text: str, words: set[str], cues: list[tuple[frozenset[str], re.Pattern[str] | None]]
) -> bool:
    for anchors, pattern in cues:
        if not anchors.isdisjoint(words) and (pattern is None or pattern.search(text)):
            return True
    return False


MEMO_MAX_CHARS = 2048
"""Texts up to this long have their answer remembered (longer ones are rarely repeated)."""
MEMO_SIZE = 4096
_memo: dict[bytes, RequestType] = {}
"""128-bit digest of a text -> its type; the oldest entry goes first when full."""


def classify_text(text: str) -> RequestType:
    """Classify the user's words alone (see the module docstring)."""
    if len(text) > MEMO_MAX_CHARS:
        return _classify(text)
    key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    kind = _memo.get(key)
    if kind is None:
        kind = _memo[key] = _classify(text)
        if len(_memo) > MEMO_SIZE:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del _memo[next(iter(_memo))]
    return kind


def _classify(text: str) -> RequestType:
    if _names_someone(text):
        return "patient"
    normalized = normalize_text(text)
    words = set(normalized.translate(_NOT_WORD).split())
    if _matches(normalized, words, _PATIENT):
        return "patient"
    if _matches(normalized, words, _PRACTICE):
        return "practice"
    return "general"


def classify(req: CacheRequest) -> RequestType:
    """``patient`` when the request names a patient, holds an image (a radiograph, a
    photo of a lesion: patient data in itself) or its user text reads like one."""
    if req.patient_id is not None or has_images(req.messages):
        return "patient"
    parts: list[str] = []
    for message in req.messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return classify_text("\n".join(parts))
