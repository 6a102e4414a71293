"""How memory keeps, drops and summarises turns (the rules, without a server)."""

from __future__ import annotations

from typing import Any

from iatros.agents.memory import Remembered, remember
from iatros.agents.spec import AgentSpec, Memory


def _turns(n: int, words: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        out += [{"role": "user", "content": f"q{i} " + "word " * words},
                {"role": "assistant", "content": f"a{i}"}]  # fmt: skip
    return out


async def test_conversation_keeps_the_last_turns_and_never_summarises() -> None:
    asked: list[Any] = []

    async def summarise(turns: list[dict[str, Any]], previous: str | None) -> str:
        asked.append(turns)
        return "never"

    kept = await remember(Memory(kind="conversation", turns=2), Remembered(_turns(2)),
                          "q2", "a2", summarise)  # fmt: skip
    assert [t["content"].split()[0] for t in kept.turns] == ["q1", "a1", "q2", "a2"]
    assert kept.summary is None and asked == []


async def test_summary_folds_what_exceeds_the_token_budget_into_the_summary() -> None:
    seen: list[tuple[list[dict[str, Any]], str | None]] = []

    async def summarise(turns: list[dict[str, Any]], previous: str | None) -> str:
        seen.append((turns, previous))
        return "S2"

    memory = Remembered(_turns(3, words=60), summary="S1", summarised_turns=4)
    # 10 turns allowed, but about 100 tokens: the long exchanges are folded in, the newest
    # (short) one stays verbatim.
    kept = await remember(Memory(kind="summary", turns=10, max_tokens=100), memory,
                          "short question", "short answer", summarise)  # fmt: skip
    assert kept.turns == [{"role": "user", "content": "short question"},
                          {"role": "assistant", "content": "short answer"}]  # fmt: skip
    assert kept.summary == "S2" and kept.summarised_turns == 7
    folded, previous = seen[0]
    assert previous == "S1" and [t["content"].split()[0] for t in folded][::2] == [
        "q0", "q1", "q2"]


def test_memory_shorthand_and_default() -> None:
    base = {"kind": "agent", "name": "a", "model": "m", "instructions": "x"}
    assert AgentSpec.model_validate(base).memory.kind == "none"
    spec = AgentSpec.model_validate({**base, "memory": "summary"})
    assert spec.memory == Memory(kind="summary")
