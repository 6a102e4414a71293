"""A local, explainable complexity score for a chat request (EN and FR).

The score (0 to 1) adds up weighted cues found in the request — its length, how
many questions it asks, clinical-reasoning vocabulary (differential diagnosis,
drug interactions, dosing for special populations, ...), multi-step
instructions, attachments and conversation depth — minus cues of routine
practice questions (opening hours, prices, appointments). Every cue that fired
is returned as a reason, so a routing decision can always be explained.
Pure Python with precompiled patterns: a few microseconds per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# (reason, weight, pattern). Patterns are matched on lower-cased text.
_CUES: list[tuple[str, float, re.Pattern[str]]] = [
    (reason, weight, re.compile(pattern))
    for reason, weight, pattern in [
        (
            "clinical:differential_diagnosis",
            0.55,
            r"differential|diagnostic différentiel|diagnostics? possibles?|what could (this|it) be"
            r"|qu'est-ce que (ça|cela) pourrait être|rule out|écarter",
        ),
        (
            "clinical:drug_interaction",
            0.55,
            r"interact|contre-?indic|contraindicat|associ(er|ation) (avec|de)|combine[dr]? with"
            r"|together with|en même temps que|along with",
        ),
        (
            "clinical:special_population",
            0.4,
            r"renal|rénal|kidney|hepati|hépati|liver|foie|pregnan|enceinte|grossesse|breastfeed"
            r"|allait|elderly|\bâgée?s?\b|pediatric|pédiatri|infant|nourrisson|neonat|\bchild"
            r"|\benfants?\b|dialys|clearance|clairance|insuffisan",
        ),
        (
            "clinical:dosing",
            0.2,
            r"\bdos(e|es|age|ing|ages)\b|posologie|\bmg/kg\b|titrat|adjust|ajust",
        ),
        (
            "clinical:mechanism",
            0.5,
            r"pathophysiolog|physiopatholog|mechanism|mécanisme|prognos|pronostic|etiolog|étiolog",
        ),
        (
            "clinical:evidence",
            0.35,
            r"evidence|guideline|recommandations?|risk.?benefit|bénéfice.?risque|compare|comparer"
            r"|versus|\bvs\.?\b|pros and cons|avantages et inconvénients|études?\b|studies",
        ),
        (
            "clinical:management",
            0.3,
            r"management|treatment plan|plan de traitement|prise en charge|prophyla|antibiothérapie"
            r"|antibiotic (choice|therapy|regimen)",
        ),
        (
            "clinical:comorbidity",
            0.3,
            r"comorbid|polypharm|polyméd|history of|antécédents?|diabet|diabét|diabète|hypertens"
            r"|anticoag|warfarin|immunocompromis|immunodéprim|cardiac|cardiaque|heart|c(œ|oe)ur"
            r"|allerg|endocardit",
        ),
        (
            "clinical:current_medication",
            0.3,
            r"patient on |patients on |\bon (warfarin|aspirin|beta.?blockers?|metformin|insulin)"
            r"|sous (traitement|anticoag|bêta|beta)|\btaking\b|\bprend\b",
        ),
        (
            "clinical:case_presentation",
            0.3,
            r"\b\d{1,3}[- ]?(year|yo\b|ans\b)|patient (de|of|aged|âgé)|presents? with|se présente"
            r"|symptoms?|symptômes?|signes? cliniques?|examination|examen clinique",
        ),
        (
            "task:multi_step",
            0.25,
            r"step by step|étape par étape|first.{0,80}then|d'abord.{0,80}ensuite|\n\s*\d+[.)]\s",
        ),
        ("task:justify", 0.2, r"\bwhy\b|pourquoi|justif"),
        (
            "task:write_document",
            0.2,
            r"write (a|an) [\w -]{0,20}(report|letter|summary|note)|rédige[rz]?|draft|compte.rendu"
            r"|summari[sz]|résume[rz]?|synthèse",
        ),
    ]
]
_ROUTINE = re.compile(
    r"opening hours|open(ed)? (on|at|today)|horaires?|ouvert|address|adresse|parking"
    r"|appointment|rendez.vous|book|réserver|prendre rdv|\brdv\b|price|prix|tarif|cost of"
    r"|combien coûte"
    r"|phone number|téléphone|email|wifi|cancel|annuler|insurance card|carte vitale|mutuelle"
)
_QUESTION = re.compile(r"\?")


@dataclass(frozen=True, slots=True)
class Complexity:
    score: float
    reasons: tuple[str, ...]

    def explain(self) -> str:
        return f"{self.score:.2f}[{','.join(self.reasons) or 'no-cues'}]"


def _text(content: Any) -> tuple[str, int]:
    """Text of a message content, and the number of non-text parts (attachments)."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts, attachments = [], 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        else:
            attachments += 1
    return "\n".join(texts), attachments


def score(messages: list[dict[str, Any]]) -> Complexity:
    """Score a conversation; the last user turn counts most, earlier turns add depth."""
    reasons: list[str] = []
    total = 0.0
    last_user = ""
    attachments = 0
    turns = 0
    for message in messages:
        text, parts = _text(message.get("content"))
        attachments += parts
        if message.get("role") == "user":
            last_user = text
            turns += 1
    text = last_user.lower()

    words = len(text.split())
    if words > 250:
        total += 0.35
        reasons.append(f"length:{words}_words")
    elif words > 80:
        total += 0.2
        reasons.append(f"length:{words}_words")
    elif words > 40:
        total += 0.1
        reasons.append(f"length:{words}_words")
    questions = len(_QUESTION.findall(text))
    if questions >= 2:
        total += min(0.1 * questions, 0.3)
        reasons.append(f"questions:{questions}")
    for reason, weight, pattern in _CUES:
        hits = {m.group(0) for m in pattern.finditer(text)}
        if hits:
            # Several distinct cues of one kind weigh a little more than one.
            total += weight + 0.1 * min(len(hits) - 1, 2)
            reasons.append(reason)
    if attachments:
        total += 0.35
        reasons.append(f"attachments:{attachments}")
    if turns > 3:
        total += min(0.05 * (turns - 3), 0.2)
        reasons.append(f"depth:{turns}_turns")
    if _ROUTINE.search(text) and total < 0.6:
        total -= 0.2
        reasons.append("routine:practice_information")
    return Complexity(round(min(max(total, 0.0), 1.0), 3), tuple(reasons))
