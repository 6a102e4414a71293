"""What an agent remembers of a conversation between calls (``memory:`` in its template).

- ``none``: every call starts afresh (the caller sends the history it wants).
- ``conversation``: the last ``turns`` exchanges (a user message and the answer) are kept
  per (tenant, agent, ``iatros.conversation_id``) in the store and put before the new
  message; older ones are dropped.
- ``summary``: as ``conversation``, but turns that no longer fit (more than ``turns``, or
  more than ``max_tokens`` together) are summarised by the agent's own model route
  through the chat service (so budgets, usage and audit apply), and the summary goes
  before the kept turns.

Rows are tenant-scoped like every other (the session filters by tenant), so one
tenant's conversation id never reaches another's memory. Memory needs a conversation
id: without one a call remembers nothing (a shared default would mix callers).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from iatros.agents.models import AgentMemory
from iatros.agents.spec import Memory
from iatros.routing.router import estimate_prompt_tokens
from iatros.store.db import Database

SUMMARY_PROMPT = (
    "Summarise this conversation between a patient or staff member and an assistant in a "
    "few sentences, keeping every fact, request, date, name and decision that a later "
    "answer may need. Write only the summary."
)
Summarise = Callable[[list[dict[str, Any]], str | None], Awaitable[str]]
"""(turns to fold in, the previous summary) -> the new summary."""


@dataclass(slots=True)
class Remembered:
    turns: list[dict[str, Any]] = field(default_factory=list)
    summary: str | None = None
    summarised_turns: int = 0

    def messages(self) -> list[dict[str, Any]]:
        """What goes between the agent's instructions and the new message."""
        out: list[dict[str, Any]] = []
        if self.summary:
            note = f"Summary of the earlier conversation: {self.summary}"
            out.append({"role": "system", "content": note})
        return out + [dict(t) for t in self.turns]


class MemoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, tenant: str, agent: str, conversation_id: str) -> Remembered:
        def read() -> Remembered:
            with self.db.session(tenant) as session:
                row = session.scalars(select(AgentMemory).where(
                    AgentMemory.agent == agent, AgentMemory.conversation_id == conversation_id
                )).first()  # fmt: skip
                if row is None:
                    return Remembered()
                return Remembered(list(row.turns), row.summary, row.summarised_turns)

        return await asyncio.to_thread(read)

    async def save(
        self, tenant: str, agent: str, conversation_id: str, memory: Remembered
    ) -> None:
        def write() -> None:
            with self.db.session(tenant) as session:
                row = session.scalars(select(AgentMemory).where(
                    AgentMemory.agent == agent, AgentMemory.conversation_id == conversation_id
                ).with_for_update()).first()  # fmt: skip
                now = datetime.now(UTC)
                if row is None:
                    session.add(AgentMemory(
                        id="mem_" + secrets.token_hex(12), tenant_id=tenant, agent=agent,
                        conversation_id=conversation_id, turns=memory.turns,
                        summary=memory.summary, summarised_turns=memory.summarised_turns,
                        updated_at=now,
                    ))  # fmt: skip
                else:
                    row.turns = memory.turns
                    row.summary = memory.summary
                    row.summarised_turns = memory.summarised_turns
                    row.updated_at = now

        await asyncio.to_thread(write)


    async def forget(self, tenant: str, agent: str, conversation_id: str) -> bool:
        """Delete what ``agent`` remembers of a conversation; False if it remembered none."""

        def write() -> bool:
            with self.db.session(tenant) as session:
                row = session.scalars(select(AgentMemory).where(
                    AgentMemory.agent == agent, AgentMemory.conversation_id == conversation_id
                )).first()  # fmt: skip
                if row is None:
                    return False
                session.delete(row)
                return True

        return await asyncio.to_thread(write)


def _exchanges(turns: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Turns grouped as exchanges, each starting at a user message."""
    out: list[list[dict[str, Any]]] = []
    for turn in turns:
        if turn.get("role") == "user" or not out:
            out.append([turn])
        else:
            out[-1].append(turn)
    return out


async def remember(
    config: Memory, memory: Remembered, user: str, answer: str,
    summarise: Summarise | None,
) -> Remembered:  # fmt: skip
    """``memory`` with the new exchange added and the oldest dropped or summarised."""
    exchanges = _exchanges([*memory.turns, {"role": "user", "content": user},
                            {"role": "assistant", "content": answer}])  # fmt: skip
    keep = exchanges[-config.turns :]
    overflow = exchanges[: -config.turns] if len(exchanges) > config.turns else []
    if config.kind == "summary":
        # Also fold in the oldest kept ones while they exceed the token budget (the newest
        # exchange always stays verbatim).
        while len(keep) > 1 and estimate_prompt_tokens(
            [t for e in keep for t in e]
        ) > config.max_tokens:
            overflow.append(keep.pop(0))
    summary, summarised = memory.summary, memory.summarised_turns
    if overflow and config.kind == "summary" and summarise is not None:
        folded = [t for e in overflow for t in e]
        summary = await summarise(folded, memory.summary)
        summarised += len(overflow)
    return Remembered([t for e in keep for t in e], summary, summarised)


def summary_messages(turns: list[dict[str, Any]], previous: str | None) -> list[dict[str, Any]]:
    """The request that summarises ``turns`` (and a previous summary) into one."""
    lines = [f"Earlier summary: {previous}"] if previous else []
    lines += [f"{t.get('role', 'user')}: {t.get('content', '')}" for t in turns]
    return [{"role": "system", "content": SUMMARY_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]  # fmt: skip
