"""The services, built once from the settings: what the server and the CLI both run.

``create_app`` (HTTP) and ``iatros chat`` (in-process) build the same :class:`Services`,
so a request asked from the terminal goes through the same admission, grounding, cache,
routing and accounting as one sent over HTTP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from iatros.agents.service import AgentService
from iatros.clinical.imaging.findings import radiograph_images
from iatros.clinical.imaging.service import RadiographService
from iatros.clinical.scribe.service import ScribeService
from iatros.clinical.speech.transcriber import Transcriber
from iatros.config import Settings
from iatros.experiments.service import ExperimentService
from iatros.gateway.chat import ChatService
from iatros.gateway.grounding import Grounder
from iatros.gateway.pipeline import Gateway
from iatros.governance.service import Governance
from iatros.jobs import JobQueue, build_queue
from iatros.knowledge import KnowledgeBase
from iatros.observability.monitor import Monitor
from iatros.reviews import ReviewDesk, build_review_desk


@dataclass(slots=True)
class Services:
    settings: Settings
    gateway: Gateway
    governance: Governance
    knowledge: KnowledgeBase | None
    chat: ChatService
    transcriber: Transcriber
    reviews: ReviewDesk
    scribe: ScribeService
    jobs: JobQueue = field(init=False)
    experiments: ExperimentService = field(init=False)
    """Releases and experiments (``iatros.experiments``): what each route serves."""
    """The job queue (``iatros.jobs``); workers are started by the server's lifespan
    (``jobs.workers``) or ``iatros worker``, never by a CLI command that only asks."""
    radiographs: RadiographService = field(init=False)
    """Radiograph studies; registers its processing job (``radiographs.ingest``) on the
    queue, so ``iatros worker`` processes run it too."""
    monitor: Monitor | None = field(init=False, default=None)
    """Anomaly detection and alerts (``alerts.enabled``), started with the services."""
    agents: AgentService = field(init=False)
    """Agent and workflow templates and runs; the server's lifespan starts its resume loop
    (``agents.start()``), a CLI process never does."""

    def __post_init__(self) -> None:
        self.jobs = build_queue(self.settings.jobs, self.settings.redis_url)
        gov, cfg = self.governance, self.settings.experiments
        self.experiments = ExperimentService(
            gov.db, self.settings, gov.audit, refresh_s=cfg.refresh_s,
            analysis_interval_s=cfg.analysis_interval_s,
        )  # fmt: skip
        self.gateway.router.releases = self.experiments.selector
        if self.settings.alerts.enabled:
            self.monitor = Monitor(self.settings, self.gateway)
            self.experiments.rollouts.alerts = self.monitor  # a rollback is an alert
        if self.knowledge is not None:
            self.knowledge.attach_queue(self.jobs)
        self.scribe.attach_queue(self.jobs)  # long recordings: scribe.transcribe jobs
        self.radiographs = RadiographService(
            self.chat, self.governance, self.jobs, self.settings
        )
        self.chat.image_sources["radiographs"] = radiograph_images(self.radiographs)
        self.agents = AgentService(
            self.settings, self.chat, self.governance, self.reviews.queue, self.knowledge,
            scribe=self.scribe,
        )
        self.agents.store.pinned = self.experiments.registry.pinned_agent_version

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
        grounder = Grounder(
            kb, settings.knowledge.min_score, settings.knowledge.reviewed_min_overlap
        )
        transcriber = Transcriber(gw, settings.transcription)
        reviews = build_review_desk(settings, gov, kb)
        chat = ChatService(gw, gov, grounder, reviews)
        scribe = ScribeService(chat, transcriber, gov, settings.scribe)
        return cls(settings, gw, gov, kb, chat, transcriber, reviews, scribe)

    async def start(self) -> None:
        await self.governance.start()
        await self.gateway.start()
        await self.experiments.start_background()
        if self.monitor is not None:
            await self.monitor.start()
        await self.transcriber.start()
        if self.knowledge is not None:
            await self.knowledge.start()
        self.reviews.start()

    async def close(self) -> None:
        """Close in reverse order; one failing close does not keep the others open."""
        with contextlib.suppress(Exception):
            await self.jobs.close()  # first: its handlers use the services below
        with contextlib.suppress(Exception):
            await self.scribe.close()
        with contextlib.suppress(Exception):
            await self.agents.close()
        with contextlib.suppress(Exception):
            await self.reviews.close()
        if self.knowledge is not None:
            with contextlib.suppress(Exception):
                await self.knowledge.close()
        with contextlib.suppress(Exception):
            await self.transcriber.close()
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                await self.monitor.close()
        with contextlib.suppress(Exception):
            await self.experiments.close()
        with contextlib.suppress(Exception):
            await self.gateway.close()
        await self.governance.close()
