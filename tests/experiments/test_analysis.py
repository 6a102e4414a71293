"""The analysis and the promotion decision on usage records with known effects.

Usage records are written straight into the journal's table, tagged with the variant as
the router tags them (``experiment=<id>:<variant>;`` in ``route``), so each case knows
the truth: a variant that is better, one that is better but breaks a guardrail, and a
broken assignment (sample-ratio mismatch) that must block any conclusion.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iatros.config import load_settings
from iatros.errors import Conflict
from iatros.experiments.service import ExperimentService
from iatros.store.db import PLATFORM, Database, database_url
from iatros.store.feedback import Feedback
from iatros.store.models import UsageRecord


@pytest.fixture()
def svc(tmp_path: Path) -> Any:
    settings = load_settings(overrides={
        "data_dir": str(tmp_path),
        "providers": {"t": {"type": "test"}},
        "deployments": {"a": {"provider": "t", "model": "test-chat"},
                        "b": {"provider": "t", "model": "test-chat"}},
        "models": {"assistant": {"deployments": ["a", "b"]}},
        "embeddings": {"default_model": None},
    })  # fmt: skip
    db = Database(database_url(None, tmp_path))
    db.upgrade()
    events: list[dict[str, Any]] = []
    service = ExperimentService(db, settings, lambda **kw: events.append(kw))
    service.events = events  # type: ignore[attr-defined]
    yield service
    db.close()


def running(svc: ExperimentService, primary: str, guardrails: list[str],
            auto: bool = False) -> tuple[str, str, str]:
    a = svc.registry.create("assistant", {"deployments": ["a"]}, "A", "t")["id"]
    b = svc.registry.create("assistant", {"deployments": ["b"]}, "B", "t")["id"]
    exp = svc.create({"route": "assistant", "primary_metric": primary, "guardrails": guardrails,
                      "auto_promote": auto,
                      "variants": [{"name": "A", "release_id": a, "share": 50},
                                   {"name": "B", "release_id": b, "share": 50}]}, "t")
    svc.start(exp["id"], "t")
    with svc.db.session(PLATFORM) as s:  # the experiment started a minute ago
        from iatros.experiments.models import Experiment

        row = s.get(Experiment, exp["id"])
        assert row is not None
        row.started_at = datetime.now(UTC) - timedelta(minutes=1)
    return exp["id"], a, b


def journal(svc: ExperimentService, exp_id: str, variant: str, n: int, *, error_p: float,
            latency: float, seed: int, thumbs_up_p: float | None = None,
            per_unit: int = 1, unit_error_p: Any = None) -> None:
    """``n`` requests of ``variant``; ``per_unit`` consecutive requests share a unit (and,
    with ``unit_error_p``, that unit's own error rate)."""
    rng = np.random.default_rng(seed)
    errors = rng.random(n) < error_p
    if unit_error_p is not None:
        errors = rng.random(n) < np.repeat(unit_error_p, per_unit)[:n]
    lat = rng.lognormal(np.log(latency), 0.4, n)
    rows = []
    feedback = []
    for i in range(n):
        rid = f"req_{variant}_{seed}_{i}"
        rows.append(UsageRecord(
            tenant_id="clinic", request_id=rid, ts=datetime.now(UTC), key_id="k", endpoint="chat",
            model="assistant", deployment=variant.lower(), cache="miss",
            route=f"assistant; experiment={exp_id}:{variant}; release=r; strategy=priority",
            status=502 if errors[i] else 200, prompt_tokens=10, completion_tokens=20,
            cost_eur=0.001, latency_ms=float(lat[i]), grounding="",
            unit=f"{variant}-{i // per_unit}"))
        if thumbs_up_p is not None and i % 2 == 0:
            feedback.append(Feedback(tenant_id="clinic", ts=datetime.now(UTC), key_id="k",
                                     request_id=rid, comment="",
                                     rating="up" if rng.random() < thumbs_up_p else "down"))
    with svc.db.session(PLATFORM) as s:
        s.add_all(rows + feedback)


def test_better_variant_is_promoted(svc: ExperimentService) -> None:
    exp_id, _, b = running(svc, "error_rate", ["latency_ms"])
    journal(svc, exp_id, "A", 3000, error_p=0.06, latency=800, seed=1)
    journal(svc, exp_id, "B", 3000, error_p=0.01, latency=800, seed=2)
    report = svc.analysis(exp_id)
    arm_b = report["variants"][1]
    assert arm_b["requests"] == 3000
    assert arm_b["metrics"]["error_rate"]["mean"] == pytest.approx(0.01, abs=0.006)
    seq = arm_b["metrics"]["error_rate"]["vs_control"]["sequential"]
    assert seq["ci_high"] < 0 and seq["lift"] < -0.5
    assert report["decision"]["action"] == "promote" and report["decision"]["winner"] == "B"
    done = svc.promote(exp_id, "t")
    assert done["release"]["active_id"] == b
    assert svc.show(exp_id)["status"] == "promoted"
    state = svc.selector.state("assistant")
    assert state is not None and state.release_id == b and not state.arms
    with pytest.raises(Conflict) as exc:
        svc.promote(exp_id, "t")
    assert exc.value.code == "experiment_not_running"


def test_guardrail_harm_blocks_promotion(svc: ExperimentService) -> None:
    exp_id, _, _ = running(svc, "error_rate", ["latency_ms"])
    journal(svc, exp_id, "A", 3000, error_p=0.06, latency=800, seed=3)
    journal(svc, exp_id, "B", 3000, error_p=0.01, latency=1200, seed=4)
    assert svc.auto_promote() == []  # not auto-promoted, but its interval is kept
    history = svc.analysis(exp_id)["history"]
    assert len(history) == 1 and history[0]["action"] == "continue"
    assert history[0]["variants"]["B"]["ci_high"] < 0  # fewer errors, significantly
    decision = svc.analysis(exp_id)["decision"]
    assert decision["action"] == "continue"
    assert "harms latency_ms" in decision["why"]
    with pytest.raises(Conflict) as exc:
        svc.promote(exp_id, "t")
    assert exc.value.code == "no_winner"


def test_sample_ratio_mismatch_blocks_conclusions(svc: ExperimentService) -> None:
    exp_id, _, _ = running(svc, "error_rate", [])
    journal(svc, exp_id, "A", 3000, error_p=0.06, latency=800, seed=5)
    journal(svc, exp_id, "B", 2600, error_p=0.01, latency=800, seed=6)
    report = svc.analysis(exp_id)
    assert report["srm"]["mismatch"] is True
    assert report["decision"]["action"] == "blocked"


def test_auto_promotion_on_thumbs_up(svc: ExperimentService) -> None:
    exp_id, _, b = running(svc, "thumbs_up_rate", ["error_rate"], auto=True)
    journal(svc, exp_id, "A", 2000, error_p=0.02, latency=800, seed=7, thumbs_up_p=0.55)
    journal(svc, exp_id, "B", 2000, error_p=0.02, latency=800, seed=8, thumbs_up_p=0.80)
    report = svc.analysis(exp_id)
    thumbs = report["variants"][1]["metrics"]["thumbs_up_rate"]
    assert thumbs["n"] == 1000 and thumbs["mean"] == pytest.approx(0.8, abs=0.05)
    assert svc.auto_promote() == [exp_id]
    assert svc.registry.show(b)["state"] == "active"
    actions = [e["action"] for e in svc.events]  # type: ignore[attr-defined]
    assert "experiment.promote" in actions and "release.promote" in actions


def test_no_data_means_continue(svc: ExperimentService) -> None:
    exp_id, _, _ = running(svc, "latency_ms", ["error_rate"])
    report = svc.analysis(exp_id)
    assert report["decision"]["action"] == "continue"
    assert [v["requests"] for v in report["variants"]] == [0, 0]


def test_analysis_is_per_unit_not_per_request(svc: ExperimentService) -> None:
    """40 units per arm sending 50 requests each, with very different error rates per unit
    (an A/A): counted per request the arms would look different (standard error too small
    by the cluster factor); per unit the interval is honest and nothing is concluded."""
    exp_id, _, _ = running(svc, "error_rate", [])
    rng = np.random.default_rng(11)
    journal(svc, exp_id, "A", 2000, error_p=0, latency=800, seed=12, per_unit=50,
            unit_error_p=rng.beta(0.3, 3, 40))
    journal(svc, exp_id, "B", 2000, error_p=0, latency=800, seed=13, per_unit=50,
            unit_error_p=rng.beta(0.3, 3, 40))
    report = svc.analysis(exp_id)
    arm_a, arm_b = report["variants"]
    assert (arm_a["units"], arm_b["units"]) == (40, 40)
    assert (arm_a["requests"], arm_b["requests"]) == (2000, 2000)
    assert arm_b["metrics"]["error_rate"]["n"] == 40
    fixed = arm_b["metrics"]["error_rate"]["vs_control"]["fixed"]
    pa, pb = fixed["mean_a"], fixed["mean_b"]
    naive_se = float(np.sqrt(pa * (1 - pa) / 2000 + pb * (1 - pb) / 2000))
    assert fixed["se"] > 2.5 * naive_se  # the cluster effect the request-level test ignores
    assert report["decision"]["action"] == "continue"
    assert report["srm"]["observed"] == [40.0, 40.0]


def test_cache_hits_and_ttft_are_metrics_of_their_variant(svc: ExperimentService) -> None:
    exp_id, _, _ = running(svc, "cache_hit_ratio", ["ttft_ms"])
    with svc.db.session(PLATFORM) as s:
        for variant, hits in (("A", 10), ("B", 30)):
            for i in range(40):
                s.add(UsageRecord(
                    tenant_id="clinic", request_id=f"req_c_{variant}_{i}", ts=datetime.now(UTC),
                    key_id="k", endpoint="chat", model="assistant", deployment="a",
                    route=f"assistant; experiment={exp_id}:{variant}; release=r; cache=exact",
                    cache="hit-exact" if i < hits else "miss", status=200, prompt_tokens=1,
                    completion_tokens=1, cost_eur=0.0, latency_ms=5.0, grounding="",
                    ttft_ms=None if i % 2 else 100.0 + (i if variant == "B" else 0),
                    unit=f"{variant}{i}"))  # fmt: skip
    report = svc.analysis(exp_id)
    arm_a, arm_b = report["variants"]
    assert arm_a["metrics"]["cache_hit_ratio"]["mean"] == pytest.approx(10 / 40)
    assert arm_b["metrics"]["cache_hit_ratio"]["mean"] == pytest.approx(30 / 40)
    assert arm_a["metrics"]["ttft_ms"]["mean"] == pytest.approx(100.0)  # streams only
    assert arm_b["metrics"]["ttft_ms"]["mean"] == pytest.approx(100.0 + 19.0)
