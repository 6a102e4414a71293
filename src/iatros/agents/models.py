"""The agents' tables: templates (versioned) and workflow runs (migration 0009), and the
conversation memory of agents (migration 0011).

A template row is immutable: applying a changed document adds version n + 1, applying the
same document again adds nothing (``digest``), so ``iatros agents apply`` is idempotent
and a run always names the exact version it ran. A run row is rewritten after every step
(``steps`` holds each step's record), which is what makes a run survive a restart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from iatros.store.models import Base, TenantScoped


class AgentTemplate(TenantScoped, Base):
    __tablename__ = "agent_templates"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version", name="uq_agent_template_version"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AgentRun(TenantScoped, Base):
    __tablename__ = "agent_runs"
    __table_args__ = (Index("ix_agent_runs_status", "status"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    """``running``, ``waiting`` (an approval), ``succeeded``, ``failed``, ``rejected``."""
    input: Mapped[Any] = mapped_column(JSON)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    waiting_review_id: Mapped[str | None] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    capabilities: Mapped[str] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AgentMemory(TenantScoped, Base):
    """What one agent remembers of one conversation: the last turns, and a summary of the
    turns before them (``memory: summary``). One row per (tenant, agent, conversation)."""

    __tablename__ = "agent_memory"
    __table_args__ = (
        UniqueConstraint("tenant_id", "agent", "conversation_id", name="uq_agent_memory"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(String(128))
    turns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """``{"role", "content"}`` messages, oldest first."""
    summary: Mapped[str | None] = mapped_column(Text)
    summarised_turns: Mapped[int] = mapped_column(Integer)
    """How many turns the summary covers (for the record; they are no longer kept)."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
