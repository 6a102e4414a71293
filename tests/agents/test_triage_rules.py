"""The red-flag rules the phone triage escalates on, and the local model's JSON grammar."""

from __future__ import annotations

import pytest

from iatros.agents.triage_rules import assess
from iatros.errors import InvalidRequest
from iatros.providers.local import grammar_schema


@pytest.mark.parametrize(("complaint", "flags"), [
    ("My face is swollen and it reaches my eye", ["facial swelling spreading to the eye or neck"]),
    ("It hurts to swallow and I find it hard to swallow water",
     ["difficulty breathing or swallowing"]),
    ("The gum keeps bleeding since the extraction", ["uncontrolled bleeding"]),
    ("My son's front tooth was knocked out at football", ["knocked-out permanent tooth"]),
    ("I have a fever and my jaw is swollen",
     ["high fever with swelling"]),
    ("I would like a check-up. Nothing hurts.", []),
    ("A swollen gum. My eye is fine today.", []),  # two sentences: not spreading to the eye
])  # fmt: skip
def test_red_flags_are_found_in_one_sentence(complaint: str, flags: list[str]) -> None:
    verdict = assess(complaint, None)
    assert verdict["red_flags"] == flags
    assert verdict["escalate"] is bool(flags)
    assert verdict["urgency"] == ("emergency" if flags else "routine")


def test_rules_never_lower_the_models_urgency_and_check_its_flags() -> None:
    model = {"urgency": "urgent", "red_flags": ["patient cannot swallow"], "next_step": "x"}
    verdict = assess("Toothache since Monday", model)
    assert verdict["urgency"] == "emergency"  # a confirmed flag raises it
    assert verdict["from_model"] == ["difficulty breathing or swallowing"]
    made_up = assess("Toothache since Monday", {"urgency": "urgent",
                                                "red_flags": ["I have a toothache"]})
    assert made_up["red_flags"] == [] and made_up["urgency"] == "urgent"
    severe = assess("The pain is unbearable, I cannot sleep", {"urgency": "routine"})
    assert severe["urgency"] == "urgent" and severe["escalate"] is False


def test_response_format_becomes_a_grammar_schema_or_a_precise_refusal() -> None:
    assert grammar_schema(None) is None and grammar_schema({"type": "text"}) is None
    assert grammar_schema({"type": "json_object"}) == '{"type": "object"}'
    schema = {"type": "object", "properties": {"a": {"enum": ["x"]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    assert grammar_schema(fmt) == '{"type":"object","properties":{"a":{"enum":["x"]}}}'
    with pytest.raises(InvalidRequest) as info:
        grammar_schema({"type": "json_schema"})
    assert info.value.param == "response_format"
