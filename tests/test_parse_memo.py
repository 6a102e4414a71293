"""Validated chat bodies are reused for byte-identical requests, and only for them."""

from __future__ import annotations

import orjson
import pytest

from iatros.api import schemas
from iatros.api.chat import chat_request
from iatros.api.http import ParseMemo
from iatros.auth import Principal
from iatros.errors import InvalidRequest


def _body(question: str, **extra: object) -> bytes:
    return orjson.dumps(
        {"model": "assistant", "messages": [{"role": "user", "content": question}], **extra}
    )


def test_identical_bytes_share_one_validated_model() -> None:
    memo = ParseMemo(schemas.ChatCompletionRequest)
    first = memo.parse(_body("What is a crown?"))
    assert memo.parse(_body("What is a crown?")) is first
    other = memo.parse(_body("What is a crown?", temperature=0.2))
    assert other is not first and other.temperature == 0.2


def test_invalid_bodies_fail_every_time_and_are_not_kept() -> None:
    memo = ParseMemo(schemas.ChatCompletionRequest)
    bad = orjson.dumps({"model": "assistant", "messages": "bad"})
    for _ in range(2):
        with pytest.raises(InvalidRequest) as info:
            memo.parse(bad)
        assert info.value.param == "messages"
    assert memo._memo == {}


def test_bounded_by_count_and_body_size() -> None:
    memo = ParseMemo(schemas.ChatCompletionRequest, size=3, max_body=200)
    bodies = [_body(f"question {i}") for i in range(5)]
    for body in bodies:
        memo.parse(body)
    assert list(memo._memo) == bodies[2:]  # the oldest went first
    memo.parse(_body("x" * 300))
    assert len(memo._memo) == 3 and all(len(b) <= 200 for b in memo._memo)


def test_calls_built_from_a_shared_model_do_not_share_extra_parameters() -> None:
    memo = ParseMemo(schemas.ChatCompletionRequest)
    body = _body("Q?", response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    principal = Principal(tenant="t", key_id="k", role="admin")
    first = chat_request(memo.parse(body), principal).call
    first.extra["response_format"]["json_schema"]["name"] = "changed"
    first.messages[0]["content"] = "changed"
    again = chat_request(memo.parse(body), principal).call
    assert again.extra["response_format"]["json_schema"]["name"] == "x"
    assert again.messages[0]["content"] == "Q?"
