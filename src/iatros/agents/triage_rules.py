"""Dental red flags found by rules, not by a model (the ``dental_red_flags`` tool).

Why rules: escalating a caller with a spreading facial swelling must not depend on a
model's judgement. The local Gemma 270M, constrained to the triage JSON, writes the
right shape but not the right content (it flags a routine check-up as an emergency and
calls the complaint itself a red flag), and an upstream model can miss a flag too. So
the phone triage workflow escalates on these rules, before and whatever the model says;
a flag the model names counts only if the same rules recognise it in the model's words.

The rules are deliberately simple (two kinds of words in one sentence) and err towards
escalation: "no swelling near the eye" still matches. A false alarm costs a call back;
a missed flag can cost an airway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from iatros.tools import ToolContext, ToolResult

URGENCY = ("routine", "urgent", "emergency")


@dataclass(frozen=True, slots=True)
class Rule:
    label: str
    first: re.Pattern[str]
    second: re.Pattern[str] | None = None
    """Both must occur in one sentence (None: the first alone suffices)."""


def _words(*alternatives: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")", re.I)


RED_FLAGS = (
    Rule("facial swelling spreading to the eye or neck",
         _words("swell", "swollen", "puff", "abscess"), _words("eye", "neck", "throat")),
    Rule("difficulty breathing or swallowing",
         _words("breath", "swallow"),
         _words("hard", "difficult", "trouble", "struggl", "can'?t", "cannot", "unable",
                "painful to")),
    Rule("uncontrolled bleeding", _words("bleed", "blood"),
         _words("won'?t stop", "will not stop", "doesn'?t stop", "not stop", "uncontrolled",
                "heav", "a lot", "for hours", "keeps")),
    Rule("knocked-out permanent tooth",
         _words("knocked out", "knocked-out", "avuls", "fell out", "came out"),
         _words("tooth", "teeth", "front")),
    Rule("high fever with swelling", _words("fever", "temperature of", "feverish"),
         _words("swell", "swollen", "puff")),
)  # fmt: skip
URGENT = (
    Rule("severe pain", _words("severe", "unbearable", "excruciating", "can'?t sleep",
                               "cannot sleep", "painkillers don'?t")),
    Rule("broken tooth", _words("broke", "broken", "cracked", "chipped"),
         _words("tooth", "teeth", "filling", "crown")),
)  # fmt: skip
_SENTENCES = re.compile(r"[.!?;\n]+")


def matches(rules: tuple[Rule, ...], text: str) -> list[str]:
    """The labels of the rules that hold in ``text`` (in rule order, once each)."""
    found: list[str] = []
    for sentence in _SENTENCES.split(text):
        for rule in rules:
            if rule.label in found or not rule.first.search(sentence):
                continue
            if rule.second is None or rule.second.search(sentence):
                found.append(rule.label)
    return [r.label for r in rules if r.label in found]


def assess(complaint: str, assessment: dict[str, Any] | None) -> dict[str, Any]:
    """The rules' verdict on a complaint, merged with a model's assessment if given.

    Urgency is never lowered below the model's: rules only add. ``from_model`` lists the
    flags found only in the model's words (for a second escalation).
    """
    flags = matches(RED_FLAGS, complaint)
    model_urgency = None
    model_text = ""
    if isinstance(assessment, dict):
        if assessment.get("urgency") in URGENCY:
            model_urgency = str(assessment["urgency"])
        named = assessment.get("red_flags")
        if isinstance(named, list):
            model_text = ". ".join(str(x) for x in named)
    from_model = [f for f in matches(RED_FLAGS, model_text) if f not in flags]
    all_flags = flags + from_model
    urgent = matches(URGENT, complaint)
    floor = "emergency" if all_flags else ("urgent" if urgent else "routine")
    urgency = max(floor, model_urgency or "routine", key=URGENCY.index)
    if all_flags:
        next_step = (
            "Red flag: a dentist calls the patient back now; if breathing or swallowing is "
            "difficult, the patient goes to the emergency department."
        )
    elif isinstance(assessment, dict) and assessment.get("next_step"):
        next_step = str(assessment["next_step"])
    else:
        next_step = ("Book an appointment within 24-48 hours." if urgency == "urgent"
                     else "Book a routine appointment.")  # fmt: skip
    return {
        "urgency": urgency, "red_flags": all_flags, "from_model": from_model,
        "urgent_signs": urgent, "escalate": bool(all_flags), "next_step": next_step,
        "model_urgency": model_urgency,
    }  # fmt: skip


class DentalRedFlags:
    """Tool: the red-flag rules over a caller's complaint (and a model's assessment)."""

    name = "dental_red_flags"
    description = (
        "Check a dental phone complaint against red-flag rules (spreading facial swelling, "
        "difficulty breathing or swallowing, uncontrolled bleeding, knocked-out permanent "
        "tooth, fever with swelling); optionally merge a model's triage assessment."
    )
    permission = "chat"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "complaint": {"type": "string", "minLength": 1, "maxLength": 8000},
            "assessment": {"type": ["object", "null"]},
        },
        "required": ["complaint"],
        "additionalProperties": False,
    }

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        verdict = assess(str(arguments["complaint"]), arguments.get("assessment"))
        flags = ", ".join(verdict["red_flags"]) or "none"
        return ToolResult(f"urgency {verdict['urgency']}; red flags: {flags}", verdict)
