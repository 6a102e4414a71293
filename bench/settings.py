"""Knobs shared by the scenarios: the full run and the CI smoke run differ only here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from procs import QuietWaiter

if TYPE_CHECKING:
    from peers import Peer

ADMIN_KEY = "sk-bench-admin-0123456789abcdefghij"
UPSTREAM_DELAY_MS = 50.0
"""The fake upstream answers after 50 ms, as in the reference figures."""
REDIS_URL = "redis://127.0.0.1:6379/13"
"""Iatros with 2 workers shares its cache through Redis; DB 13 is not used by the tests."""
CACHE_SECRET = "bench-cache-tag-secret-0123456789"


@dataclass(frozen=True)
class BenchSettings:
    smoke: bool
    workdir: Path
    """Temporary directory for configs, data dirs and server logs."""
    concurrency: tuple[int, ...] = (10, 100, 500, 1000)
    """Pass-through (non-streaming) clients."""
    warmup_s: float = 0.5
    duration_s: float = 3.0
    """Each cell is short: the whole suite, 10-minute soak included, fits in 15 minutes."""
    prime_s: float = 0.6
    """Before its first cell, each server answers 10 clients for this long (each kind)."""
    cell_timeout_s: float = 90.0
    """Per request: LiteLLM with 1,000 streams queued answers each after ~30 s."""
    budget_s: float = 885.0
    """The suite must end within 15 minutes: LiteLLM's heaviest cells (1,000 clients, run
    last) are skipped, and reported as such, if they would not fit in what is left."""
    deadline: float | None = None
    """``time.monotonic()`` by which the suite should be done (set by run.py)."""
    stream_concurrency: tuple[int, ...] = (100, 1000)
    stream_duration_s: float = 3.0
    hold_streams: int = 1000
    hold_s: float = 60.0
    """1,000 concurrent streams held for a minute (Iatros, 1 worker); others: a short cell."""
    cache_concurrency: int = 100
    semantic_concurrency: int = 10
    iatros_workers: tuple[int, ...] = (1, 2)
    litellm_workers: tuple[int, ...] = (1, 2)
    idle_connections: int = 20_000
    idle_hold_s: float = 5.0
    """Shorter than Iatros's 30 s keep-alive timeout, which would close them on purpose."""
    soak_warmup_s: float = 10.0
    soak_s: float = 590.0
    """10 minutes of load in all: a 10 s warm-up (the cache fills to its bound), 590 s
    measured, memory sampled every ``soak_sample_s``."""
    soak_sample_s: float = 10.0
    soak_rate_per_s: float = 200.0
    start_ahead_s: float = 90.0
    """LiteLLM's servers (20-30 s to start) are started this long before the soak ends."""
    litellm: Peer | None = None
    """The installed LiteLLM (None: not measured, e.g. in the smoke run)."""
    litellm_skipped: str | None = None
    """Why LiteLLM was not measured, for the report."""
    local_rounds: int = 5
    local_max_tokens: int = 128
    local_budget_s: float = 120.0
    """No new round starts after this (at least two rounds run): bounds a run on a busy box."""
    local_questions: tuple[str, ...] = field(
        default=(
            "What is ibuprofen?",
            "How is type 2 diabetes treated?",
            "What is the difference between a virus and a bacterium?",
            "What does a high white blood cell count mean?",
        )
    )
    models_dir: Path = Path.home() / ".cache" / "iatros-test-models"
    quiet: QuietWaiter = field(
        default_factory=lambda: QuietWaiter(max_each_s=1.5, budget_s=8, probe_s=0.1)
    )
    """Before each measurement, wait (bounded: the suite has a time budget) for other
    processes to go idle."""

    @classmethod
    def for_run(cls, smoke: bool, workdir: Path, models_dir: Path | None = None) -> BenchSettings:
        settings = cls(smoke=False, workdir=workdir) if not smoke else cls._smoke(workdir)
        return replace(settings, models_dir=models_dir) if models_dir is not None else settings

    @classmethod
    def _smoke(cls, workdir: Path) -> BenchSettings:
        """Every scenario, for a second or two: proves the suite runs, not how fast."""
        return cls(
            smoke=True,
            workdir=workdir,
            concurrency=(10,),
            warmup_s=0.3,
            duration_s=0.7,
            prime_s=0.2,
            stream_concurrency=(10,),
            stream_duration_s=0.7,
            hold_streams=10,
            hold_s=2.0,
            cache_concurrency=10,
            semantic_concurrency=4,
            litellm_workers=(),
            idle_connections=50,
            idle_hold_s=0.5,
            soak_warmup_s=0.3,
            soak_s=2.0,
            soak_sample_s=0.5,
            soak_rate_per_s=50.0,
            local_rounds=1,
            local_max_tokens=8,
            local_questions=("What is ibuprofen?",),
            quiet=QuietWaiter(max_each_s=0, budget_s=0),
        )


def iatros_has_setting(name: str) -> bool:
    """Whether the Iatros being measured knows a top-level setting (revisions differ)."""
    from iatros.config import Settings

    return name in Settings.model_fields
