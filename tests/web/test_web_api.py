"""The web app's server side without a browser: /v1/me, feedback, dashboard stats, files."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import select

from iatros.store.db import Database, database_url
from iatros.store.feedback import Feedback, save_feedback
from iatros.testing.fake_upstream import FakeUpstream
from iatros.web import STATIC_DIR
from iatros.web.stats import Row, histogram_quantiles, percentile, route_decision, summarize
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config
from tests.web.conftest import create_key, stats

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def unique() -> str:
    """A unique word without digits (numbers with units would read as patient details)."""
    return uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))


def chat(server: RunningServer, key: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "assistant", "messages": [{"role": "user", "content": text}], **extra}
    with server.http(key) as http:
        return http.post("/v1/chat/completions", json=body)


# -- /v1/me ------------------------------------------------------------------------


def test_me_tells_tenant_role_and_what_the_role_may_do(web_server: RunningServer) -> None:
    with web_server.http() as http:
        admin = http.get("/v1/me").json()
    assert admin["tenant"] == "default" and admin["role"] == "admin" and admin["platform"] is True
    assert admin["capabilities"] == {
        "chat": True,
        "feedback": True,
        "documents": True,
        "documents_manage": True,
        "dashboard": True,
        "deployments": True,
        "reviews_ask": True,
        "reviews": True,
        "feedback_read": True,
    }
    assert "keys:manage" in admin["permissions"]
    assert {m["id"] for m in admin["chat_models"]} == {"assistant", "fake-gpt", "fake-azure-gpt"}
    assert [m["id"] for m in admin["chat_models"] if m["logical"]] == ["assistant"]
    assert all(m["knowledge"] is None for m in admin["chat_models"])  # no grounded route

    auditor = create_key(web_server, tenant="clinic-me", role="auditor")
    with web_server.http(auditor["key"]) as http:
        me = http.get("/v1/me").json()
    assert (me["tenant"], me["role"], me["key_id"], me["platform"]) == (
        "clinic-me",
        "auditor",
        auditor["id"],
        False,
    )
    assert sorted(me["permissions"]) == ["audit:read", "feedback:read", "usage:read"]
    assert me["capabilities"]["feedback_read"] and not me["capabilities"]["reviews"]
    assert me["capabilities"]["dashboard"] and not me["capabilities"]["chat"]
    assert not me["capabilities"]["deployments"] and not me["capabilities"]["documents"]

    clinician = create_key(web_server, tenant="clinic-me", role="clinician")
    with web_server.http(clinician["key"]) as http:
        me = http.get("/v1/me").json()
    assert me["capabilities"]["chat"] and not me["capabilities"]["dashboard"]
    assert me["capabilities"]["reviews_ask"] and not me["capabilities"]["reviews"]
    assert me["key_capabilities"] == []

    # A clinician key given the reviewer capability sees the review queue and feedback.
    reviewer = create_key(
        web_server, tenant="clinic-me", role="clinician", capabilities=["reviewer"]
    )
    with web_server.http(reviewer["key"]) as http:
        me = http.get("/v1/me").json()
    assert me["capabilities"]["reviews"] and me["capabilities"]["feedback_read"]
    assert {"reviews:answer", "feedback:read"} <= set(me["permissions"])
    assert me["key_capabilities"] == ["reviewer"] and not me["capabilities"]["dashboard"]


def test_me_refuses_missing_and_wrong_keys(web_server: RunningServer) -> None:
    with web_server.http(None) as http:
        missing = http.get("/v1/me")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    with web_server.http("iat_wrong") as http:
        wrong = http.get("/v1/me")
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"


# -- feedback ------------------------------------------------------------------------


def test_feedback_is_stored_replaced_and_tenant_scoped(web_server: RunningServer) -> None:
    alice = create_key(web_server, tenant="fb-a", role="clinician")
    bob = create_key(web_server, tenant="fb-b", role="clinician")
    answer = chat(web_server, alice["key"], "feedback question " + unique())
    request_id = answer.headers["x-iatros-request-id"]

    with web_server.http(alice["key"]) as http:
        first = http.post("/v1/feedback", json={"request_id": request_id, "rating": "up"})
        assert first.status_code == 201, first.text
        assert first.json()["deployment"] == "fake-gpt"
        again = http.post(
            "/v1/feedback",
            json={"request_id": request_id, "rating": "down", "comment": "  wrong dose  "},
        )
        assert again.status_code == 201
    # Another tenant cannot rate (or learn about) this answer.
    with web_server.http(bob["key"]) as http:
        other = http.post("/v1/feedback", json={"request_id": request_id, "rating": "up"})
    assert other.status_code == 404 and other.json()["error"]["param"] == "request_id"

    db = web_server.app.state.governance.db
    with db.session("fb-a") as session:
        rows = session.scalars(select(Feedback)).all()
    assert [(r.request_id, r.rating, r.comment, r.key_id) for r in rows] == [
        (request_id, "down", "wrong dose", alice["id"])
    ]
    with db.session("fb-b") as session:
        assert session.scalars(select(Feedback)).all() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "req_1", "rating": "meh"}, "rating"),
        ({"rating": "up"}, "request_id"),
        ({"request_id": "req_1", "rating": "up", "stars": 5}, "stars"),
        ({"request_id": "req_1", "rating": "up", "comment": "x" * 2001}, "comment"),
        ({"request_id": "<script>", "rating": "up"}, "request_id"),
        ({"request_id": 42, "rating": "up"}, "request_id"),
    ],
)
def test_feedback_refuses_bad_input(
    web_server: RunningServer, body: dict[str, Any], param: str
) -> None:
    with web_server.http() as http:
        resp = http.post("/v1/feedback", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_feedback_refuses_malformed_json_and_unknown_requests(web_server: RunningServer) -> None:
    with web_server.http() as http:
        bad = http.post(
            "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
        )
        unknown = http.post("/v1/feedback", json={"request_id": "req_nope", "rating": "up"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
    auditor = create_key(web_server, tenant="fb-a", role="auditor")
    with web_server.http(auditor["key"]) as http:
        denied = http.post("/v1/feedback", json={"request_id": "req_x", "rating": "up"})
    assert denied.status_code == 403


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'web.db'}"
        return
    name = f"iatros_web_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:  # a failure, not a skip: the CI starts PostgreSQL
        pytest.fail(f"PostgreSQL is not reachable: {exc}", pytrace=False)
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_feedback_migration_and_store(db_url: str, tmp_path: Path) -> None:
    from iatros.governance.usage import store_usage

    db = Database(database_url(db_url, tmp_path))
    db.upgrade()
    store_usage(
        db,
        [
            {
                "request_id": "req_1",
                "ts": datetime.now(UTC).isoformat(),
                "tenant_id": "t1",
                "key_id": "k1",
                "endpoint": "chat",
                "model": "assistant",
                "deployment": "gpt",
                "route": "",
                "cache": "miss",
                "status": 200,
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "cost_eur": 0.0,
                "latency_ms": 5.0,
            }
        ],
    )
    saved = save_feedback(db, tenant="t1", key_id="k1", request_id="req_1", rating="up", comment="")
    assert saved is not None and saved["deployment"] == "gpt"
    saved = save_feedback(
        db, tenant="t1", key_id="k1", request_id="req_1", rating="down", comment="c"
    )
    assert saved is not None and saved["rating"] == "down"
    missing = save_feedback(
        db, tenant="t2", key_id="k1", request_id="req_1", rating="up", comment=""
    )
    assert missing is None
    with db.session("*") as session:
        assert [(f.tenant_id, f.rating) for f in session.scalars(select(Feedback))] == [
            ("t1", "down")
        ]
    db.close()


# -- dashboard stats ---------------------------------------------------------------------


def test_stats_count_requests_errors_cache_and_savings(
    web_server: RunningServer, fake_upstream: FakeUpstream
) -> None:
    key = create_key(web_server, tenant="stats-a", role="clinician")
    other = create_key(web_server, tenant="stats-b", role="clinician")
    question = "How long does ibuprofen take to work? " + unique()
    for _ in range(3):  # one miss, then two cache hits
        assert chat(web_server, key["key"], question).status_code == 200
    fake_upstream.behaviour.fail_status = 400
    assert chat(web_server, key["key"], "fails " + unique()).status_code == 400
    fake_upstream.behaviour.fail_status = None
    assert chat(web_server, other["key"], "other tenant " + unique()).status_code == 200

    admin_a = create_key(web_server, tenant="stats-a", role="admin")
    data = stats(web_server, admin_a["key"])
    totals = data["totals"]
    assert totals["requests"] == 4 and totals["errors"] == 1
    # The failed request may or may not have been looked up (the cache decides).
    assert totals["cache_hits"] == 2 and totals["cache_lookups"] in (3, 4)
    assert totals["cache_hit_ratio"] == round(2 / totals["cache_lookups"], 4)
    # Each answer: 9 words out at 2 EUR/1k, prompt tokens at 0.5 EUR/1k; hits cost nothing.
    prompt_tokens = len(question.split())
    one = (prompt_tokens * 0.5 + 9 * 2.0) / 1000
    assert totals["cost_eur"] == pytest.approx(one, abs=1e-6)
    assert totals["saved_eur"] == pytest.approx(2 * one, abs=1e-6)
    assert totals["latency_p50_ms"] is not None and totals["latency_p95_ms"] is not None
    assert [t["tenant"] for t in data["tenants"]] == ["stats-a"]
    assert [k["key_id"] for k in data["keys"]] == [key["id"]]
    assert {m["deployment"]: m["requests"] for m in data["models"]} == {"fake-gpt": 4}
    decisions = {r["decision"]: r["requests"] for r in data["routes"]}
    assert decisions["cache:exact"] == 2 and decisions["priority → fake-gpt"] >= 1
    assert sum(b["requests"] for b in data["series"]) == 4
    assert data["ttft"]["scope"] == "process" and data["truncated"] is False

    # The platform admin sees both tenants and may filter; a tenant admin may not.
    everything = stats(web_server)
    assert {"stats-a", "stats-b"} <= {t["tenant"] for t in everything["tenants"]}
    only_b = stats(web_server, tenant="stats-b")
    assert [t["tenant"] for t in only_b["tenants"]] == ["stats-b"]
    by_key = stats(web_server, key=key["id"])
    assert by_key["totals"]["requests"] == 4
    with web_server.http(admin_a["key"]) as http:
        assert http.get("/admin/stats", params={"tenant": "stats-b"}).status_code == 403

    auditor = create_key(web_server, tenant="stats-a", role="auditor")
    assert stats(web_server, auditor["key"])["totals"]["requests"] == 4
    with web_server.http(key["key"]) as http:
        assert http.get("/admin/stats").status_code == 403


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bucket": "week"}, "bucket"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2030-01-02", "until": "2030-01-01"}, "since"),
        ({"since": "2000-01-01", "until": "2030-01-01", "bucket": "hour"}, "bucket"),
        ({"utc_offset": "9999"}, "utc_offset"),
    ],
)
def test_stats_refuses_bad_periods(
    web_server: RunningServer, params: dict[str, str], param: str
) -> None:
    with web_server.http() as http:
        resp = http.get("/admin/stats", params=params)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_summaries_buckets_percentiles_and_routes() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)

    def row(minutes: int, **kw: Any) -> Row:
        base = {
            "ts": start + timedelta(minutes=minutes),
            "tenant": "t",
            "key_id": "k",
            "deployment": "gpt",
            "route": "assistant; strategy=priority; pick=gpt; tried=gpt",
            "cache": "miss",
            "status": 200,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "cost_eur": 0.01,
            "latency_ms": 100.0,
        }
        return Row(**{**base, **kw})

    rows = [
        row(5, latency_ms=100.0),
        row(
            10,
            latency_ms=300.0,
            status=502,
            deployment="small",
            route="assistant; strategy=priority; pick=gpt; tried=gpt>small",
        ),
        row(70, cache="hit-exact", cost_eur=0.0, route="assistant; cache=exact", latency_ms=5.0),
        row(80, status=499),
    ]
    grounded = [row(90, grounding=g) for g in ("supported", "withheld", "withheld", "escalated")]
    safety = summarize(
        rows + grounded, since=start, until=start + timedelta(hours=3), bucket="hour", prices={}
    )["safety"]
    assert safety == {"supported": 1, "no-details": 0, "flagged": 0, "withheld": 2,
                      "escalated": 1, "reviewed": 0}  # fmt: skip
    out = summarize(
        rows,
        since=start,
        until=start + timedelta(hours=3),
        bucket="hour",
        prices={"gpt": (1.0, 2.0)},
    )
    assert [b["requests"] for b in out["series"]] == [2, 2, 0]
    assert out["series"][0]["latency_p50_ms"] == 200.0
    assert out["totals"]["errors"] == 1 and out["totals"]["cancelled"] == 1
    assert out["totals"]["saved_eur"] == pytest.approx((10 * 1.0 + 20 * 2.0) / 1000)
    routes = {r["decision"] for r in out["routes"]}
    assert routes == {"priority → gpt", "priority → gpt (fallback small)", "cache:exact"}
    # Day buckets start at local midnight (UTC+2 here).
    days = summarize(
        rows,
        since=start,
        until=start + timedelta(days=1),
        bucket="day",
        prices={},
        offset=timedelta(hours=2),
    )
    assert days["series"][0]["start"] == "2029-12-31T22:00:00+00:00"
    assert percentile([], 0.5) is None and percentile([1, 2, 3, 4], 0.95) == 3.85
    assert route_decision("gpt-eu; pinned=gpt-eu", "gpt-eu") == "pinned → gpt-eu"
    assert route_decision("direct; tried=x", "x") == "direct"


def test_time_to_first_token_quantiles_from_the_histogram() -> None:
    registry = CollectorRegistry()
    histogram = Histogram(
        "iatros_time_to_first_token_seconds",
        "ttft",
        ("model",),
        buckets=(0.1, 0.5, 1.0),
        registry=registry,
    )
    assert histogram_quantiles(registry)["p50_ms"] is None
    for value in (0.05, 0.05, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.8, 0.9):
        histogram.labels("a").observe(value)
    histogram.labels("b").observe(5.0)
    out = histogram_quantiles(registry)
    assert out["count"] == 11 and out["by_model"] == {"a": 10, "b": 1}
    # rank 5.5 of 11 falls in (0.1, 0.5], which holds ranks 3..8: 0.1 + 0.4 * 3.5/6
    assert out["p50_ms"] == pytest.approx(333.33, abs=0.01)
    # rank 10.45 falls in +Inf: reported as the highest finite bound
    assert out["p95_ms"] == 1000.0


# -- the page and its files --------------------------------------------------------------


def test_page_files_and_security_headers(web_server: RunningServer) -> None:
    with httpx.Client(base_url=web_server.url) as http:
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "object-src 'none'" in csp
        assert "unsafe-inline" not in csp and "http" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        # Everything the page loads is local: no URL to another host.
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
        for path in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", page.text):
            assert http.get(path).status_code == 200, path
        manifest = http.get("/manifest.webmanifest")
        assert manifest.headers["content-type"].startswith("application/manifest+json")
        body = manifest.json()
        assert body["start_url"] == "/" and body["display"] == "standalone"
        sizes = {icon["sizes"] for icon in body["icons"]}
        assert {"192x192", "512x512"} <= sizes
        for icon in body["icons"]:
            assert http.get(icon["src"]).status_code == 200
        assert http.get("/sw.js").status_code == 200
        assert http.get("/static/js/app.js").headers["cache-control"] == "no-cache"
        assert http.get("/static/../web/__init__.py").status_code == 404
    spec = httpx.get(web_server.url + "/openapi.json").json()
    assert {"/v1/me", "/v1/feedback", "/admin/stats"} <= set(spec["paths"])
    assert "/" not in spec["paths"]


def test_every_interface_text_exists_in_english_and_french() -> None:
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text())
    fr = json.loads((STATIC_DIR / "i18n" / "fr.json").read_text())
    assert en.keys() == fr.keys()
    assert all(value.strip() for value in [*en.values(), *fr.values()])
    used: set[str] = set()
    sources = [p.read_text() for p in (STATIC_DIR / "js").glob("*.js")]
    html = (STATIC_DIR / "index.html").read_text()
    for text in sources:
        used |= set(re.findall(r"\bt\(\s*\"([a-z_]+\.[a-z0-9_.]+)\"", text))
        used |= {f"{k}.one" for k in re.findall(r"\btn\(\s*\"([a-z_]+\.[a-z0-9_]+)\"", text)}
        used |= set(re.findall(r"\"((?:chat|docs|dash|error|role)\.[a-z0-9_]+)\"", text))
    used |= set(re.findall(r"data-i18n=\"([a-z0-9_.]+)\"", html))
    used |= set(
        re.findall(
            r"[a-z-]+:([a-z]+\.[a-z0-9_]+)",
            " ".join(re.findall(r"data-i18n-attr=\"([^\"]+)\"", html)),
        )
    )
    missing = {key for key in used if key not in en and f"{key}.one" not in en}
    assert not missing, missing
    # Placeholders agree between the languages.
    for key, text in en.items():
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", fr[key])), key
    # Roles, breaker states and the error codes the app shows are all translated.
    for name in ("admin", "clinician", "service", "auditor"):
        assert f"role.{name}" in en
    for state in ("closed", "half_open", "open"):
        assert f"dash.state_{state}" in en


def test_static_files_never_use_inner_html() -> None:
    """The app builds the DOM from text nodes; innerHTML would be an injection path."""
    for path in (STATIC_DIR / "js").glob("*.js"):
        text = path.read_text()
        sinks = re.findall(
            r"\.(?:innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML\(|document\.write|\beval\(|"
            r"new Function\(|createContextualFragment",
            text,
        )
        assert not sinks, f"{path.name} uses {sinks}"
    assert ADMIN_KEY not in (STATIC_DIR / "index.html").read_text()


def test_me_on_an_open_loopback_server_needs_no_key(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    """`make run` with no key at all: the app opens without asking for one."""
    config = upstream_config(upstream)
    config.pop("admin_key")
    server = server_factory(config)
    with server.http(None) as http:
        me = http.get("/v1/me")
    assert me.status_code == 200, me.text
    assert me.json()["anonymous"] is True and me.json()["capabilities"]["chat"] is True


def test_capabilities_follow_the_permission_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from iatros.governance import roles
    from iatros.web import capabilities

    assert capabilities("service")["documents_manage"] is True  # falls back to chat
    monkeypatch.setitem(roles.PERMISSIONS, "knowledge:write", frozenset({"admin"}))
    assert capabilities("service")["documents_manage"] is False
    assert capabilities("admin")["documents_manage"] is True


def test_the_service_worker_precaches_every_module_of_the_app() -> None:
    """Offline, the shell opens only if every module app.js imports is in the cache."""
    static = Path(__file__).resolve().parents[2] / "src" / "iatros" / "web" / "static"
    shell = set(re.findall(r'"(/static/[^"]+)"', (static / "sw.js").read_text()))
    modules = {f"/static/js/{p.name}" for p in (static / "js").glob("*.js")}
    languages = {f"/static/i18n/{p.name}" for p in (static / "i18n").glob("*.json")}
    assert modules | languages <= shell, sorted((modules | languages) - shell)
    assert all((static / path.removeprefix("/static/")).is_file() for path in shell)
