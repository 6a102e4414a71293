"""Keys, request types, TTL policy and settings: the decisions made before any storage."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from iatros.cache import CacheSettings, ResponseCache, classify, request_type
from iatros.cache.keys import KeyMaker
from iatros.cache.request_type import MEMO_MAX_CHARS, MEMO_SIZE, classify_text
from tests.cache.conftest import request

KEYS = KeyMaker(b"k" * 32)


def key(**fields: Any) -> str | None:
    return KEYS.exact_key(request(**fields))


def test_equivalent_requests_share_a_key() -> None:
    base = key()
    assert base is not None
    assert key(question="  What is ibuprofen?\r\n") == base
    assert key(params={"temperature": 0.2, "max_tokens": 128, "stream": True}) == base
    assert key(params={"max_tokens": 128, "temperature": 0.2, "user": "u1", "seed": None}) == base
    assert KEYS.exact_key(request(params={"temperature": 1})) == KEYS.exact_key(
        request(params={"temperature": 1.0})
    )
    assert KEYS.exact_key(request(params={"stop": "\n"})) == KEYS.exact_key(
        request(params={"stop": ["\n"]})
    )


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "clinic-b"},
        {"model": "other"},
        {"deployment_scope": "gpt-eu"},
        {"question": "What is ibuprofen for?"},
        {"system": "Answer in French."},
        {"params": {"temperature": 0.3, "max_tokens": 128}},
        {"params": {"temperature": 0.2, "max_tokens": 128, "seed": 7}},
        {"params": {"temperature": 0.2, "max_tokens": 128, "response_format": {"type": "json"}}},
        {"patient_id": "p-1"},
        {"collection": "clinic-docs"},
        {"collection": "clinic-docs", "collection_version": "v2"},
    ],
)
def test_what_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_patients_get_different_keys_and_ids_never_appear_in_clear() -> None:
    a, b = key(patient_id="patient-4242"), key(patient_id="patient-4343")
    assert a != b
    tags = KEYS.tags(request(patient_id="patient-4242", collection="clinic-docs"))
    for value in (a, b, *tags):
        assert value is not None and "4242" not in value and "patient" not in value
    other_secret = KeyMaker(b"z" * 32)
    assert other_secret.tags(request(patient_id="patient-4242")) != KEYS.tags(
        request(patient_id="patient-4242")
    )


def test_unkeyable_requests_are_not_cached() -> None:
    assert key(params={"temperature": 0.2, "weird": object()}) is None


def test_semantic_scope_covers_everything_but_the_question() -> None:
    def parts(**fields: Any) -> Any:
        return KEYS.semantic_parts(request(**fields), max_turns=1, max_chars=500)

    base = parts(question="What is ibuprofen?")
    assert base.embed_text == "what is ibuprofen"
    assert parts(question="what is IBUPROFEN ???").scope == base.scope
    assert parts(question="What is ibuprofen?", system="Be brief").scope != base.scope
    assert parts(question="What is ibuprofen?", tenant="clinic-b").scope != base.scope
    assert parts(question="What is ibuprofen?", patient_id="p1").scope != base.scope
    assert parts(question="x" * 501) is None
    req = request("What is ibuprofen?")
    other_model = KEYS.semantic_parts(req, max_turns=1, max_chars=500, embedding_model="e5")
    assert other_model is not None and other_model.scope != base.scope


def test_semantic_is_single_turn_and_text_only_by_default() -> None:
    turns = request()
    turns.messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "What is ibuprofen?"},
    ]
    assert KEYS.semantic_parts(turns, max_turns=1, max_chars=500) is None
    assert KEYS.semantic_parts(turns, max_turns=2, max_chars=500) is not None
    image = request()
    image.messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}]
    assert KEYS.semantic_parts(image, max_turns=1, max_chars=500) is None
    tools = request()
    tools.messages = [
        {"role": "user", "content": "Book me in"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "booked", "tool_call_id": "c1"},
        {"role": "user", "content": "Thanks, and what is ibuprofen?"},
    ]
    assert KEYS.semantic_parts(tools, max_turns=5, max_chars=500) is None


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is ibuprofen?", "general"),
        ("How do I treat a dry socket?", "general"),
        ("Quels sont les effets secondaires de l'ibuprofène ?", "general"),
        ("What are your opening hours on Saturday?", "practice"),
        ("Combien coûte un détartrage ?", "practice"),
        ("Puis-je prendre rendez-vous mardi ?", "practice"),
        ("Where is the clinic located?", "practice"),
        ("Is there parking near the practice?", "practice"),
        ("My patient is allergic to penicillin, what can I give?", "patient"),
        ("Mme Dupont a mal à la dent 36", "patient"),
        ("Mon fils a 6 ans et de la fièvre", "patient"),
        ("I am pregnant, can I take ibuprofen?", "patient"),
        ("Patient born on 12/03/1980 with a fever", "patient"),
        ("The patient has a fever of 39", "patient"),
    ],
)
def test_request_types(question: str, expected: str) -> None:
    assert classify(request(question)) == expected
    assert classify(request(question)) == expected  # the remembered answer is the same


def test_the_memo_is_bounded_and_keeps_no_text() -> None:
    for i in range(MEMO_SIZE + 50):
        assert classify_text(f"What is ibuprofen, question {i}?") == "general"
    assert len(request_type._memo) == MEMO_SIZE
    assert all(isinstance(key, bytes) and len(key) == 16 for key in request_type._memo)
    assert classify_text("My patient has a fever \ud800") == "patient"  # a lone surrogate


def test_long_texts_are_classified_without_the_memo() -> None:
    padding = "How do I treat a dry socket? " * (MEMO_MAX_CHARS // 29 + 1)
    assert len(padding) > MEMO_MAX_CHARS
    assert classify(request(padding)) == "general"
    assert classify(request(padding + "My patient is allergic to penicillin.")) == "patient"


def test_a_patient_id_makes_any_request_patient_specific() -> None:
    assert classify(request("What is ibuprofen?", patient_id="p-1")) == "patient"


def test_ttl_policy_and_overrides() -> None:
    cache = ResponseCache(CacheSettings())
    assert cache.ttl_for(request("What is ibuprofen?")) == 86400
    assert cache.ttl_for(request("What are your opening hours?")) == 3600
    assert cache.ttl_for(request("What is ibuprofen?", patient_id="p-1")) == 0
    assert cache.ttl_for(request("What is ibuprofen?", ttl_override_s=60)) == 60
    # a request can shorten a patient TTL, never switch patient caching on
    assert cache.ttl_for(request("What is ibuprofen?", patient_id="p", ttl_override_s=60)) == 0
    route = cache.with_overrides({"ttl_s": {"patient": 300}})
    assert route.ttl_for(request("What is ibuprofen?", patient_id="p-1")) == 300
    assert route.ttl_for(request("What is ibuprofen?", patient_id="p", ttl_override_s=60)) == 60
    assert route.ttl_for(request("What is ibuprofen?")) == 86400


def test_explain_guard_through_the_cache() -> None:
    ok, reason = ResponseCache(CacheSettings()).explain_guard(
        "Dose of ibuprofen for a 20 kg child", "Dose of ibuprofen for a 20 kg child?"
    )
    assert ok and reason == "same clinical details"


def test_settings_validation() -> None:
    with pytest.raises(ValidationError, match="tag_secret is required"):
        CacheSettings(backend="redis", redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(ValidationError, match="redis_url is required"):
        CacheSettings(backend="redis", tag_secret="s" * 16)
    with pytest.raises(ValidationError):
        CacheSettings.model_validate({"semantic_treshold": 0.9})
    with pytest.raises(ValidationError):
        CacheSettings.model_validate({"ttl_s": {"genral": 10}})
    with pytest.raises(ValueError, match="cannot be set per route"):
        CacheSettings().with_overrides({"backend": "redis"})
    merged = CacheSettings(tag_secret="s" * 16).with_overrides(
        {"semantic": True, "ttl_s": {"practice": 60}}
    )
    assert merged.semantic and merged.ttl_s.practice == 60 and merged.ttl_s.general == 86400
    assert merged.tag_secret is not None and merged.tag_secret.get_secret_value() == "s" * 16
