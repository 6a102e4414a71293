"""Settings of the agents (``agents:`` in the YAML): which tools a tenant may use, where
the HTTP tool may go, how waiting runs are resumed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_tools: list[str] = Field(
        default_factory=lambda: [
            "knowledge_search", "dose_by_weight", "datetime_now", "dental_red_flags"
        ]
    )
    """Tools every tenant may use unless ``tenant_tools`` names the tenant."""
    tenant_tools: dict[str, list[str]] = Field(default_factory=dict)
    """Tenant -> the tools it has enabled (replaces ``default_tools`` for that tenant).
    ``http_get`` and ``review_ask`` are never enabled by default."""
    http_allow_hosts: list[str] = Field(default_factory=list)
    """Hosts (``host`` or ``host:port``) the ``http_get`` tool may reach; empty: none."""
    http_timeout_s: float = Field(5.0, gt=0, le=60)
    http_max_bytes: int = Field(65536, ge=1024, le=4 * 1024 * 1024)
    tool_calling_providers: list[str] = Field(default_factory=lambda: ["openai", "azure"])
    """Provider types whose models take OpenAI ``tools``: an agent that lets the model
    choose tools is refused on a route with another deployment (the local model)."""
    resume_interval_s: float = Field(1.0, gt=0)
    """How often waiting runs are checked for a decided approval."""
    on_restart: Literal["resume", "fail"] = "resume"
    """What happens to a run whose process stopped while it was running (found stale)."""
    stale_after_s: float = Field(30.0, gt=0)
    """A running run not saved for this long belongs to a stopped process: its steps save
    it, and the process running it touches it every third of this delay, so with several
    instances only runs of a dead one are taken over."""
    max_concurrent_runs: int = Field(16, ge=1)
    template_cache_s: float = Field(2.0, ge=0)
    """How long a parsed agent template is reused before the store is read again (a
    version applied on another instance takes effect within this delay)."""
