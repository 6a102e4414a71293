"""Units of the local provider that need no model: prompt layout and the fair queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from iatros.errors import InvalidRequest
from iatros.providers.base import ChatCall
from iatros.providers.local import FairQueue, _Job
from iatros.providers.prompt import STOP_SEQUENCES, build_prompt


def test_prompt_is_a_transcript_ending_with_the_assistant_turn() -> None:
    prompt = build_prompt(
        [
            {"role": "system", "content": "You work at a dental practice."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "When are you open?"}]},
        ]
    )
    assert "You work at a dental practice." in prompt.split("\n\n")[0]
    assert prompt.endswith(
        "User: Hello\nAssistant: Hi, how can I help?\nUser: When are you open?\nAssistant:"
    )
    assert "\nUser:" in STOP_SEQUENCES


def test_prompt_refuses_images_for_a_text_model() -> None:
    with pytest.raises(InvalidRequest, match="'image_url' is not supported"):
        build_prompt(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        )


async def test_fair_queue_round_robins_between_callers_and_is_bounded() -> None:
    loop = asyncio.get_running_loop()

    def job(key: str, n: int) -> _Job:
        return _Job(
            prompt=f"{key}{n}", call=ChatCall(messages=[]), max_tokens=1, key=key, loop=loop
        )

    queue = FairQueue(max_size=5)
    jobs = [job("a", 1), job("a", 2), job("a", 3), job("b", 1), job("c", 1)]
    assert all(queue.put(j) for j in jobs)
    assert not queue.put(job("d", 1))  # full
    order = [(await queue.get()).prompt for _ in range(5)]
    assert order == ["a1", "b1", "c1", "a2", "a3"]  # a's burst does not starve b and c
    assert len(queue) == 0


async def test_fair_queue_remove_and_wait() -> None:
    loop = asyncio.get_running_loop()
    queue = FairQueue(max_size=2)
    first = _Job(prompt="x", call=ChatCall(messages=[]), max_tokens=1, key="k", loop=loop)
    queue.put(first)
    queue.remove(first)
    assert len(queue) == 0
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    second = _Job(prompt="y", call=ChatCall(messages=[]), max_tokens=1, key="k", loop=loop)
    queue.put(second)
    assert (await asyncio.wait_for(getter, 1)) is second
    assert isinstance(second.cancel, threading.Event)
