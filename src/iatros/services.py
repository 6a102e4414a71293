"""The services, built once from the settings: what the server and the CLI both run.

``create_app`` (HTTP) and ``iatros chat`` (in-process) build the same :class:`Services`,
so a request asked from the terminal goes through the same admission, grounding, cache,
routing and accounting as one sent over HTTP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from iatros.config import Settings
from iatros.gateway.chat import ChatService
from iatros.gateway.grounding import Grounder
from iatros.gateway.pipeline import Gateway
from iatros.governance.service import Governance
from iatros.knowledge import KnowledgeBase


@dataclass(slots=True)
class Services:
    settings: Settings
    gateway: Gateway
    governance: Governance
    knowledge: KnowledgeBase | None
    chat: ChatService

    @classmethod
    def build(
        cls, settings: Settings, *, gateway: Gateway | None = None, run_jobs: bool = True
    ) -> Services:
        """``run_jobs=False`` for a process that only asks (the CLI): it must not take the
        server's queued upload jobs."""
        gw = gateway or Gateway.from_settings(settings)
        gov = Governance(settings, limiter_registry=gw.metrics.registry)
        gw.sinks.append(gov.record)
        embed = gw.embedder.internal("knowledge")
        kb = (
            KnowledgeBase(settings.knowledge, settings.data_dir, embed, run_jobs=run_jobs)
            if embed
            else None
        )
        grounder = Grounder(kb, settings.knowledge.min_score)
        return cls(settings, gw, gov, kb, ChatService(gw, gov, grounder))

    async def start(self) -> None:
        await self.governance.start()
        await self.gateway.start()
        if self.knowledge is not None:
            await self.knowledge.start()

    async def close(self) -> None:
        """Close in reverse order; one failing close does not keep the others open."""
        if self.knowledge is not None:
            with contextlib.suppress(Exception):
                await self.knowledge.close()
        with contextlib.suppress(Exception):
            await self.gateway.close()
        await self.governance.close()
