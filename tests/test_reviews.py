"""The clinical safety loop end to end over HTTP: verification of grounded answers, the
review queue (escalations, answers back to the asker, saved answers), webhooks, feedback.

Models are the in-process test provider with fixed replies (one route per behaviour), the
knowledge base is real (SQLite + the test embeddings), the server is a real uvicorn.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from iatros.reviews import verify_signature
from tests.conftest import ADMIN_KEY, RunningServer, free_port

DOC = (
    "Fluoride toothpaste. Adults should brush twice daily with a toothpaste containing "
    "1350-1500 ppm fluoride. Children under 3 years should use a smear of toothpaste "
    "containing at least 1000 ppm fluoride. Amoxicillin must not be given to patients "
    "allergic to penicillin.\n"
)
QUESTION = "What fluoride toothpaste concentration should adults brush with twice daily?"
WRONG = "Adults should use a toothpaste with 500-1280 ppm fluoride [1]."
RIGHT = "Adults should brush twice daily with 1350-1500 ppm fluoride toothpaste [1]."
WEBHOOK_SECRET = "whsec-test-0123456789"


def _config(data_dir: Path, **extra: Any) -> dict[str, Any]:
    routes = {
        "right": {"deployments": ["right-d"], "knowledge": "handbook"},
        "wrong": {"deployments": ["wrong-d"], "knowledge": "handbook"},
        "wrong-flag": {"deployments": ["wrong-d"], "knowledge": "handbook", "verification": "flag"},
        "plain": {"deployments": ["right-d"]},
    }
    return {
        "data_dir": str(data_dir),
        "admin_key": ADMIN_KEY,
        "providers": {
            "right": {"type": "test", "reply": RIGHT, "chunk_words": 2},
            "wrong": {"type": "test", "reply": WRONG, "chunk_words": 2},
            "emb": {"type": "test"},
        },
        "deployments": {
            "right-d": {"provider": "right", "model": "r"},
            "wrong-d": {"provider": "wrong", "model": "w"},
            "t-embed": {"provider": "emb", "model": "e", "kind": "embedding"},
        },
        "models": routes,
        "embeddings": {"default_model": "t-embed"},
        **extra,
    }


def _ingest(server: RunningServer, key: str = ADMIN_KEY, text: str = DOC) -> None:
    with server.http(key) as http:
        r = http.post(
            "/v1/knowledge/collections/handbook/documents",
            files={"files": ("fluoride.md", text.encode(), "text/markdown")},
        )
        assert r.status_code in (200, 201, 202), r.text
        job = r.json().get("job_id") or r.json().get("id")
        for _ in range(1200):  # up to a minute on a loaded machine
            state = http.get(f"/v1/knowledge/jobs/{job}").json()
            if state.get("state") in ("done", "failed"):
                assert state["state"] == "done", state
                return
            time.sleep(0.05)
    raise AssertionError("ingestion did not finish")


def _key(server: RunningServer, tenant: str, role: str, capabilities: list[str] = ()) -> str:
    with server.http() as http:
        r = http.post(
            "/admin/keys",
            json={"tenant": tenant, "role": role, "capabilities": list(capabilities)},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def _ask(server: RunningServer, key: str, model: str, question: str = QUESTION, **ext: Any) -> Any:
    with server.http(key) as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": question}],
                  "iatros": ext},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        return r


@pytest.fixture()
def clinic(server_factory: Any, tmp_path: Path) -> tuple[RunningServer, str, str]:
    """A server, the practice's clinician key and its reviewer key, the handbook ingested."""
    server = server_factory(_config(tmp_path / "data"))
    server.wait_ready()
    clinician = _key(server, "practice", "clinician")
    reviewer = _key(server, "practice", "clinician", ["reviewer"])
    _ingest(server, clinician)
    return server, clinician, reviewer


def _usage_grounding(server: RunningServer, request_id: str) -> str:
    db = server.gateway  # noqa: F841 - the server's own store is what the dashboard reads
    for _ in range(1200):
        with server.http() as http:
            rows = http.get("/admin/usage", params={"limit": 500}).json().get("data", [])
        for row in rows:
            if row.get("request_id") == request_id:
                return str(row.get("grounding"))
        time.sleep(0.05)
    raise AssertionError("no usage record")


def test_a_wrong_number_is_withheld_escalated_and_not_cached(clinic: Any) -> None:
    server, clinician, reviewer = clinic
    body = _ask(server, clinician, "wrong", conversation_id="conv-1").json()
    text = body["choices"][0]["message"]["content"]
    ext = body["iatros"]
    assert "500-1280" not in text and "1280" not in text
    assert "1350-1500 ppm" in text  # the closest source, quoted verbatim
    assert ext["verification"]["status"] == "unsupported"
    assert ext["verification"]["action"] == "withheld"
    assert {d["detail"] for d in ext["verification"]["unsupported"]} == {"500", "1280"}
    assert "confidence" not in ext and 0 <= ext["retrieval_match"] <= 1
    review_id = ext["review"]["id"]
    with server.http(reviewer) as http:
        item = http.get(f"/v1/reviews/{review_id}").json()
    assert item["reason"] == "unsupported_detail" and item["draft"] == WRONG
    assert item["conversation_id"] == "conv-1" and item["sources"]
    # Asked again: the withheld draft was not cached, the model is asked again.
    again = _ask(server, clinician, "wrong", conversation_id="conv-1")
    assert again.headers["x-iatros-cache"] != "hit-exact"
    with server.http() as http:
        metrics = http.get("/metrics").text
    assert 'iatros_grounded_answers_total{outcome="withheld",route="wrong"} 2.0' in metrics


def test_a_supported_answer_passes_and_says_so(clinic: Any) -> None:
    server, clinician, _ = clinic
    body = _ask(server, clinician, "right").json()
    assert body["choices"][0]["message"]["content"] == RIGHT
    verification = body["iatros"]["verification"]
    assert verification["status"] == "supported" and verification["action"] == "none"
    assert {"1350", "1500"} <= {d["detail"] for d in verification["supported"]}
    assert "review" not in body["iatros"]
    hit = _ask(server, clinician, "right")  # a verified answer is cached, and says so again
    assert hit.headers["x-iatros-cache"] == "hit-exact"
    assert hit.json()["iatros"]["verification"]["status"] == "supported"


def test_flag_policy_marks_the_detail_and_quotes_the_source(clinic: Any) -> None:
    server, clinician, _ = clinic
    body = _ask(server, clinician, "wrong-flag").json()
    text = body["choices"][0]["message"]["content"]
    assert "⚠ [unverified: 500, 1280]" in text or "⚠ [unverified: 1280, 500]" in text
    assert "“" in text and "1350-1500 ppm" in text
    assert body["iatros"]["verification"]["action"] == "flagged"
    assert "review" not in body["iatros"]


def _sse(server: RunningServer, key: str, model: str) -> list[dict[str, Any]]:
    chunks = []
    with server.http(key) as http, http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": model, "stream": True,
              "messages": [{"role": "user", "content": QUESTION}]},
    ) as r:  # fmt: skip
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(orjson.loads(line[6:]))
    return chunks


def test_a_stream_never_carries_the_unverified_number(clinic: Any) -> None:
    server, clinician, _ = clinic
    chunks = _sse(server, clinician, "wrong")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "500-1280" not in text and "1280" not in text
    assert "1350-1500 ppm" in text
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["iatros"]["verification"]["action"] == "withheld"
    assert last["iatros"]["review"]["id"].startswith("rev_")
    ok = _sse(server, clinician, "right")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in ok if c["choices"])
    assert text.strip() == RIGHT
    assert ok[-1]["iatros"]["verification"]["status"] == "supported"


def test_out_of_scope_question_reaches_a_reviewer_and_the_answer_comes_back(clinic: Any) -> None:
    server, clinician, reviewer = clinic
    question = "Which football club won the championship in 1998?"
    body = _ask(server, clinician, "right", question, conversation_id="conv-9").json()
    assert body["iatros"]["escalate"] is True
    assert body["iatros"]["sources"] == []  # irrelevant passages are not shown
    review_id = body["iatros"]["review"]["id"]
    with server.http(clinician) as http:
        assert http.get("/v1/reviews").status_code == 403  # not a reviewer
        mine = http.get("/v1/reviews/mine", params={"conversation_id": "conv-9"}).json()
        assert [i["id"] for i in mine["data"]] == [review_id]
        assert mine["data"][0]["status"] == "open"
    with server.http(reviewer) as http:
        queue = http.get("/v1/reviews", params={"status": "pending"}).json()["data"]
        assert review_id in [i["id"] for i in queue]
        assert http.get("/v1/reviews/counts").json()["pending"] >= 1
        assert http.post(f"/v1/reviews/{review_id}/claim").json()["status"] == "claimed"
        answered = http.post(
            f"/v1/reviews/{review_id}/answer",
            json={"answer": "This is outside what the practice answers.",
                  "reviewer_name": "Dr Martin"},
        )  # fmt: skip
        assert answered.status_code == 200, answered.text
        again = http.post(f"/v1/reviews/{review_id}/answer", json={"answer": "second"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "review_closed"
    with server.http(clinician) as http:
        mine = http.get("/v1/reviews/mine", params={"conversation_id": "conv-9"}).json()
    assert mine["data"][0]["answer"] == "This is outside what the practice answers."
    assert mine["data"][0]["reviewer_name"] == "Dr Martin"
    with server.http() as http:
        actions = [
            e["action"] for e in http.get("/admin/audit", params={"limit": 200}).json()["data"]
        ]
    assert {"review.created", "review.claimed", "review.answered"} <= set(actions)


def test_a_saved_answer_is_given_verbatim_to_the_next_asker(clinic: Any) -> None:
    server, clinician, reviewer = clinic
    question = "Can my patient chew gum the day after a root canal treatment?"
    first = _ask(server, clinician, "right", question).json()
    review_id = first["iatros"]["review"]["id"]
    with server.http(reviewer) as http:
        r = http.post(
            f"/v1/reviews/{review_id}/answer",
            json={"answer": "Yes, sugar-free gum is fine; avoid the treated side until the "
                  "crown is placed.", "reviewer_name": "Dr Martin", "save_to_knowledge": True},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["document_id"]
    other = _key(server, "practice", "clinician")
    second = _ask(server, other, "right", question).json()
    text = second["choices"][0]["message"]["content"]
    assert text.startswith("Yes, sugar-free gum is fine")
    assert "Dr Martin" in text
    assert second["iatros"]["reviewed"]["reviewer"] == "Dr Martin"
    assert any("reviewed" in s["document"] for s in second["iatros"]["sources"])


def test_another_tenants_review_does_not_exist(clinic: Any) -> None:
    server, clinician, _ = clinic
    body = _ask(server, clinician, "right", "Who painted the Mona Lisa in 1503?").json()
    review_id = body["iatros"]["review"]["id"]
    stranger = _key(server, "other-clinic", "clinician", ["reviewer"])
    with server.http(stranger) as http:
        assert http.get(f"/v1/reviews/{review_id}").status_code == 404
        r = http.post(f"/v1/reviews/{review_id}/answer", json={"answer": "mine now"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "review_not_found"
        assert review_id not in [i["id"] for i in http.get("/v1/reviews").json()["data"]]
    with server.http(ADMIN_KEY) as http:  # the platform admin sees every tenant's queue
        assert http.get(f"/v1/reviews/{review_id}").json()["status"] == "open"


def test_bad_review_input_gets_precise_errors(clinic: Any) -> None:
    server, _, reviewer = clinic
    with server.http(reviewer) as http:
        assert http.post("/v1/reviews/rev_nope/answer", json={"answer": "x"}).status_code == 404
        assert http.post("/v1/reviews/rev_x/answer", json={"answer": ""}).status_code == 400
        assert http.post("/v1/reviews/rev_x/answer", json={"answer": "a\x00b"}).status_code == 400
        assert http.get("/v1/reviews", params={"status": "bogus"}).status_code == 400
        r = http.post("/v1/reviews", json={"question": "q", "messages": [], "extra": 1})
        assert r.status_code == 400
        approval = http.post("/v1/reviews/rev_x/decision", json={"decision": "maybe"})
        assert approval.status_code == 400


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    fail = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append((dict(self.headers.items()), body))
        self.send_response(503 if type(self).fail else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _deliveries(server: RunningServer) -> list[dict[str, Any]]:
    with server.http() as http:
        return list(http.get("/v1/reviews/deliveries").json()["data"])


def test_webhooks_are_signed_retried_then_failed_and_logged(
    server_factory: Any, tmp_path: Path
) -> None:
    dead_port = free_port()  # nothing listens: every attempt is refused
    hook = {"secret": WEBHOOK_SECRET, "max_attempts": 3, "backoff_base_s": 0.05,
            "poll_interval_s": 0.05, "timeout_s": 1}  # fmt: skip
    down = server_factory(
        _config(
            tmp_path / "a", reviews={"webhook": {"url": f"http://127.0.0.1:{dead_port}/h", **hook}}
        )
    )
    down.wait_ready()
    with down.http() as http:
        assert http.post("/v1/reviews", json={"question": "Call me back?"}).status_code == 201
    for _ in range(1200):  # up to a minute on a loaded machine
        rows = _deliveries(down)
        if rows and rows[0]["status"] == "failed":
            break
        time.sleep(0.05)
    assert rows[0]["status"] == "failed" and rows[0]["attempts"] == 3
    assert "ConnectError" in rows[0]["last_error"]

    _Receiver.received = []
    _Receiver.fail = True
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        up = server_factory(_config(tmp_path / "b", reviews={"webhook": {"url": url, **hook}}))
        up.wait_ready()
        with up.http() as http:
            created = http.post("/v1/reviews", json={"question": "Call me back?"}).json()
        for _ in range(1200):  # first attempt refused with a 503, then the receiver recovers
            if _Receiver.received:
                _Receiver.fail = False
            rows = _deliveries(up)
            if rows and rows[0]["status"] == "delivered":
                break
            time.sleep(0.05)
        assert rows[0]["status"] == "delivered" and rows[0]["attempts"] >= 2
        headers, body = _Receiver.received[-1]
        assert headers["x-iatros-event"] == "review.created"
        assert verify_signature(WEBHOOK_SECRET.encode(), body, headers["x-iatros-signature"])
        assert not verify_signature(b"wrong", body, headers["x-iatros-signature"])
        assert orjson.loads(body)["data"]["id"] == created["id"]
        ids = {h["x-iatros-delivery"] for h, _ in _Receiver.received}
        assert len(ids) == 1  # retries carry the same delivery id: receivers deduplicate
    finally:
        receiver.shutdown()


def test_feedback_reaches_admins_with_its_request(clinic: Any) -> None:
    server, clinician, reviewer = clinic
    r = _ask(server, clinician, "right")
    request_id = r.headers["x-iatros-request-id"]
    with server.http(clinician) as http:
        fb = http.post(
            "/v1/feedback",
            json={"request_id": request_id, "rating": "down", "comment": "Too vague"},
        )
        assert fb.status_code == 201, fb.text
        assert http.get("/v1/feedback").status_code == 403
        sent = http.post(
            "/v1/reviews",
            json={"question": QUESTION, "draft": RIGHT, "request_id": request_id,
                  "collection": "handbook", "reason": "feedback", "comment": "Too vague"},
        )  # fmt: skip
        assert sent.status_code == 201 and sent.json()["reason"] == "feedback"
        assert sent.json()["details"]["comment"] == "Too vague"
    for _ in range(1200):
        with server.http(reviewer) as http:
            listed = http.get("/v1/feedback", params={"rating": "down"}).json()
        if listed["data"]:
            break
        time.sleep(0.05)
    row = listed["data"][0]
    assert row["comment"] == "Too vague" and row["route"] and row["grounding"] == "supported"
    assert listed["counts"]["down"] == 1


def test_capability_is_checked_and_kept_on_rotation(clinic: Any) -> None:
    server, _, _ = clinic
    with server.http() as http:
        r = http.post("/admin/keys", json={"tenant": "practice", "role": "clinician",
                                           "capabilities": ["superuser"]})  # fmt: skip
        assert r.status_code == 400
        made = http.post("/admin/keys", json={"tenant": "practice", "role": "clinician",
                                              "capabilities": ["reviewer"]}).json()  # fmt: skip
        assert made["capabilities"] == ["reviewer"]
        rotated = http.post(f"/admin/keys/{made['id']}/rotate").json()
        assert rotated["capabilities"] == ["reviewer"]
    with server.http(rotated["key"]) as http:
        assert http.get("/v1/reviews").status_code == 200


def test_cli_lists_shows_and_answers_in_process_and_over_http(
    server_factory: Any, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    import yaml

    config = _config(tmp_path / "data")
    config_file = tmp_path / "iatros.yaml"
    config_file.write_text(yaml.safe_dump(config))
    server = server_factory(config)
    server.wait_ready()
    with server.http() as http:
        first = http.post("/v1/reviews", json={"question": "Is 2 mg too much?"}).json()
        second = http.post("/v1/reviews", json={"question": "Call the lab?"}).json()

    def iatros(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IATROS_")}
        return subprocess.run(
            [sys.executable, "-m", "iatros", "reviews", *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    listed = iatros("list", "--json", "--config", str(config_file))
    assert listed.returncode == 0, listed.stderr
    ids = [orjson.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert {first["id"], second["id"]} <= set(ids)
    answered = iatros(
        "answer", first["id"], "--text", "No, 2 mg is the usual dose.", "--name", "Dr Lee",
        "--config", str(config_file),
    )  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    twice = iatros("answer", first["id"], "--text", "again", "--config", str(config_file))
    assert twice.returncode == 1 and "409" in twice.stderr
    remote = ("--url", server.url, "--key", ADMIN_KEY)
    shown = iatros("show", first["id"], *remote)
    assert shown.returncode == 0, shown.stderr
    item = orjson.loads(shown.stdout)
    assert item["answer"] == "No, 2 mg is the usual dose." and item["reviewer_name"] == "Dr Lee"
    assert item["answered_by"] == "cli"
    dismissed = iatros("dismiss", second["id"], "--note", "duplicate", *remote)
    assert dismissed.returncode == 0, dismissed.stderr
    missing = iatros("show", "rev_missing", *remote)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_a_model_failure_on_a_knowledge_route_is_escalated(
    server_factory: Any, tmp_path: Path
) -> None:
    config = _config(tmp_path / "data")
    config["providers"]["down"] = {
        "type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 1,
    }  # fmt: skip
    config["deployments"]["down-d"] = {"provider": "down", "model": "m"}
    config["models"]["broken"] = {"deployments": ["down-d"], "knowledge": "handbook",
                                  "retry": {"max_attempts": 1}}  # fmt: skip
    server = server_factory(config)
    server.wait_ready()
    _ingest(server)
    with server.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "broken", "messages": [{"role": "user", "content": QUESTION}]},
        )
        assert r.status_code >= 500
        items = http.get("/v1/reviews", params={"reason": "model_failure"}).json()["data"]
    assert len(items) == 1 and items[0]["question"] == QUESTION
    assert items[0]["request_id"] == r.headers["x-iatros-request-id"]
