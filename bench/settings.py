"""Knobs shared by the scenarios: the full run and the CI smoke run differ only here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from procs import QuietWaiter

ADMIN_KEY = "sk-bench-admin-0123456789abcdef"
UPSTREAM_DELAY_MS = 50.0
"""The fake upstream answers after 50 ms, as in the reference figures."""


@dataclass(frozen=True)
class BenchSettings:
    smoke: bool
    workdir: Path
    """Temporary directory for configs, data dirs and server logs."""
    concurrency: tuple[int, ...] = (10, 100, 500)
    warmup_s: float = 2.0
    duration_s: float = 10.0
    stream_duration_s: float = 8.0
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
    quiet: QuietWaiter = field(default_factory=lambda: QuietWaiter(max_each_s=20, budget_s=60))
    """Before each measurement, wait (bounded) for other processes to go idle."""

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
            duration_s=1.0,
            stream_duration_s=1.0,
            local_rounds=1,
            local_max_tokens=8,
            local_questions=("What is ibuprofen?",),
            quiet=QuietWaiter(max_each_s=0, budget_s=0),
        )


def iatros_has_setting(name: str) -> bool:
    """Whether the Iatros being measured knows a top-level setting (revisions differ)."""
    from iatros.config import Settings

    return name in Settings.model_fields
