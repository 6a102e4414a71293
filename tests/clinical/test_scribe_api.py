"""The scribe over HTTP: transcript → draft note with linked statements → edit → sign →
amend; tenant isolation, sealed storage, audit, and the errors of bad edits."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from iatros.testing.fake_upstream import FakeUpstream
from tests.clinical.conftest import speech_config
from tests.clinical.speech import needs_espeak, speak
from tests.conftest import ADMIN_KEY, RunningServer

REPLY = (
    "The patient reports pain in the lower left tooth with cold drinks since Monday [1]. "
    "Deep cavity on tooth 36 [3]. The patient enjoys skiing in the Alps."
)
VISIT = """[doctor] hello, what brings you in today?
[patient] my lower left tooth hurts when i drink something cold, since monday.
[doctor] let me have a look. tooth thirty six has a deep cavity and the gum is swollen.
[patient] i am allergic to penicillin.
[doctor] your blood pressure is one hundred and thirty over eighty five.
[doctor] take ibuprofen four hundred milligrams by mouth three times a day for three days.
[doctor] we will do a filling on tooth thirty six next week.
"""


@pytest.fixture(scope="module")
def scribe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("scribe-data")
    config = speech_config(data)
    config["providers"]["t"]["reply"] = REPLY
    settings = load_settings(overrides=config)
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


def _create(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {
        "transcript": VISIT,
        "template": "dental",
        "language": "en",
        "patient": {"id": "p-4711", "name": "Jane Roe", "birth_date": "1980-02-29"},
        "clinician": {"name": "Dr Ada Molar"},
        **extra,
    }
    return http.post("/v1/scribe/encounters", json=body)


def test_draft_note_links_every_statement(scribe_server: RunningServer) -> None:
    with scribe_server.http() as http:
        resp = _create(http)
    assert resp.status_code == 201, resp.text
    enc = resp.json()
    assert enc["status"] == "draft" and enc["version"] == 1 and enc["template"] == "dental"
    assert [line["speaker"] for line in enc["transcript"]["lines"][:2]] == ["clinician", "patient"]
    sections = enc["note"]["sections"]
    assert [s["id"] for s in sections][:3] == ["chief_complaint", "history", "findings"]
    first = sections[0]["statements"]
    assert first[0]["text"].startswith("The patient reports pain")
    assert first[0]["lines"] == [2] and not first[0]["unsupported"]
    assert first[1]["lines"] == [3] and not first[1]["unsupported"]
    assert first[2]["unsupported"] and first[2]["lines"] == []  # skiing: said by no one
    cov = enc["note"]["coverage"]
    assert cov["statements"] == 3 * len(sections) and cov["share_linked"] == pytest.approx(0.667)
    structured = enc["note"]["structured"]
    ibuprofen = next(m for m in structured["medications"] if m["name"] == "ibuprofen")
    assert ibuprofen["dose"] == {"value": 400.0, "unit": "mg"}
    assert ibuprofen["route"] == "oral" and ibuprofen["frequency"] == "3 times a day"
    assert ibuprofen["lines"] == [6]
    assert [a["substance"] for a in structured["allergies"]] == ["penicillin"]
    assert all(m["name"] != "penicillin" for m in structured["medications"])
    bp = structured["vitals"][0]
    assert bp["name"] == "blood_pressure" and bp["value"] == {"systolic": 130, "diastolic": 85}
    assert [t["fdi"] for t in structured["teeth"]] == [36]
    assert structured["teeth"][0]["lines"] == [3, 7]
    assert enc["patient"]["id"] == "p-4711"


def test_edit_sign_amend_and_the_409s(scribe_server: RunningServer) -> None:
    with scribe_server.http() as http:
        enc = _create(http).json()
        eid = enc["id"]
        edit = {
            "version": 1,
            "sections": [
                {
                    "id": "prescriptions",
                    "statements": [
                        {"text": "Ibuprofen 400 mg by mouth three times a day for three days."},
                        {"text": "Chlorhexidine mouthwash twice daily.", "lines": [3]},
                    ],
                }
            ],
        }
        edited = http.put(f"/v1/scribe/encounters/{eid}/note", json=edit)
        assert edited.status_code == 200, edited.text
        rx = next(s for s in edited.json()["note"]["sections"] if s["id"] == "prescriptions")
        assert rx["statements"][0]["lines"] == [6] and rx["statements"][0]["edited"]
        assert 3 in rx["statements"][1]["lines"]  # the clinician's own link stands
        stale = http.put(f"/v1/scribe/encounters/{eid}/note", json={**edit, "version": 7})
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "version_mismatch"

        signed = http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Dr Ada Molar"})
        assert signed.status_code == 200, signed.text
        body = signed.json()
        assert body["status"] == "signed" and body["note"]["signature"]["name"] == "Dr Ada Molar"
        assert body["versions"][0]["content_sha256"]

        again = http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Dr Ada Molar"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "already_signed"
        locked = http.put(f"/v1/scribe/encounters/{eid}/note", json=edit)
        assert locked.status_code == 409 and locked.json()["error"]["code"] == "note_signed"
        assert "amend" in locked.json()["error"]["message"]

        amended = http.post(f"/v1/scribe/encounters/{eid}/amend")
        assert amended.status_code == 201
        assert amended.json()["version"] == 2 and amended.json()["status"] == "draft"
        assert amended.json()["note"]["amends"] == 1
        twice = http.post(f"/v1/scribe/encounters/{eid}/amend")
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "note_not_signed"
        fix = {"sections": [{"id": "advice", "statements": [{"text": "Avoid cold drinks."}]}]}
        assert http.put(f"/v1/scribe/encounters/{eid}/note", json=fix).status_code == 200
        # The signed version is untouched by the amendment.
        v1 = http.get(f"/v1/scribe/encounters/{eid}", params={"version": 1}).json()
        assert v1["status"] == "signed" and v1["note"]["signature"]["name"] == "Dr Ada Molar"
        advice = next(s for s in v1["note"]["sections"] if s["id"] == "advice")
        assert all(s["text"] != "Avoid cold drinks." for s in advice["statements"])
        listed = http.get("/v1/scribe/encounters").json()["data"]
        assert eid in [e["id"] for e in listed]


def test_another_tenants_encounter_is_not_found(scribe_server: RunningServer) -> None:
    with scribe_server.http() as admin:
        eid = _create(admin).json()["id"]
        key = admin.post("/admin/keys", json={"tenant": "clinic-b", "role": "clinician"})
        assert key.status_code == 201
        other = key.json()["key"]
    with scribe_server.http(other) as http:
        for resp in (
            http.get(f"/v1/scribe/encounters/{eid}"),
            http.put(f"/v1/scribe/encounters/{eid}/note", json={"sections": []}),
            http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Mallory"}),
            http.post(f"/v1/scribe/encounters/{eid}/amend"),
        ):
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "encounter_not_found"
        assert http.get("/v1/scribe/encounters").json()["data"] == []
    with scribe_server.http() as admin:  # nothing was changed by the attempts
        assert admin.get(f"/v1/scribe/encounters/{eid}").json()["status"] == "draft"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"template": "cardio"}, "template"),
        ({"transcript": "   \n "}, "transcript"),
        ({"patient": {"id": "p1", "birth_date": "2020-02-30"}}, "patient.birth_date"),
        ({"language": "english"}, "language"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_encounter_requests(
    scribe_server: RunningServer, change: dict[str, Any], param: str
) -> None:
    with scribe_server.http() as http:
        resp = _create(http, **change)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_bad_edits(scribe_server: RunningServer) -> None:
    with scribe_server.http() as http:
        eid = _create(http).json()["id"]
        unknown = http.put(
            f"/v1/scribe/encounters/{eid}/note",
            json={"sections": [{"id": "objective", "statements": []}]},
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "sections"
        missing = http.get("/v1/scribe/encounters/enc_000000000000000000000000")
        assert missing.status_code == 404
        malformed = http.get("/v1/scribe/encounters/../admin")
        assert malformed.status_code in (400, 404)
        bad_tooth = http.put(
            f"/v1/scribe/encounters/{eid}/note",
            json={"sections": [], "structured": {"teeth": [{"fdi": 99}]}},
        )
        assert bad_tooth.status_code == 400
        assert bad_tooth.json()["error"]["param"] == "structured.teeth.0.fdi"
        fixed = http.put(
            f"/v1/scribe/encounters/{eid}/note",
            json={"sections": [], "structured": {"teeth": [{"fdi": 46, "lines": [3.0]}]}},
        )
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["note"]["structured"]["teeth"] == [{"fdi": 46, "lines": [3]}]
        no_name = http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": ""})
        assert no_name.status_code == 400 and no_name.json()["error"]["param"] == "name"
        # The failed edits lost nothing: the draft is as it was.
        assert http.get(f"/v1/scribe/encounters/{eid}").json()["note"]["sections"][0]["statements"][
            0
        ]["lines"] == [2]


def test_sealed_at_rest_and_audited(scribe_server: RunningServer) -> None:
    with scribe_server.http() as http:
        eid = _create(http).json()["id"]
        db = Path(scribe_server.settings.data_dir) / "iatros.db"
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT transcript, details, patient_ref FROM scribe_encounters WHERE id = ?",
                (eid,),
            ).fetchone()
            notes = conn.execute(
                "SELECT content FROM scribe_note_versions WHERE encounter_id = ?", (eid,)
            ).fetchall()
        blobs = [row[0], row[1], *(n[0] for n in notes)]
        for blob in blobs:
            assert b"penicillin" not in blob and b"Jane" not in blob and b"tooth" not in blob
        assert "p-4711" not in row[2]
        actions: list[dict[str, Any]] = []
        for _ in range(50):
            audit = http.get("/admin/audit", params={"limit": 500}).json()["data"]
            actions = [r for r in audit if r["target"] == eid]
            if any(r["action"] == "scribe.encounter.create" for r in actions):
                break
            time.sleep(0.1)
        created = next(r for r in actions if r["action"] == "scribe.encounter.create")
        assert created["details"]["patient"] == row[2]  # keyed hash, never the id
        assert "p-4711" not in str(audit)


@needs_espeak
def test_encounter_from_a_recording_and_audio_retention(scribe_server: RunningServer) -> None:
    audio = speak(
        "My lower left tooth hurts when I drink something cold. "
        "Take ibuprofen four hundred milligrams three times a day."
    )
    with scribe_server.http() as http:
        resp = http.post(
            "/v1/scribe/encounters",
            files={"file": ("visit.wav", audio)},
            data={
                "template": "soap",
                "language": "en",
                "patient_id": "p-9",
                "clinician_name": "Dr Who",
            },
        )
        assert resp.status_code == 201, resp.text
        enc = resp.json()
        assert enc["source"] == "audio" and enc["audio"]["kept"]
        assert enc["transcript"]["model"] == "whisper-tiny-en"
        text = " ".join(line["text"] for line in enc["transcript"]["lines"]).lower()
        assert "ibuprofen" in text
        assert enc["note"]["structured"]["medications"][0]["name"] == "ibuprofen"
        signed = http.post(f"/v1/scribe/encounters/{enc['id']}/sign", json={"name": "Dr Who"})
        assert signed.json()["audio"]["kept"] is False
        assert signed.json()["audio"]["deleted_at"]
        silent = http.post(
            "/v1/scribe/encounters",
            files={"file": ("quiet.wav", b"RIFF0000WAVE" + b"\x00" * 100)},
            data={"template": "soap"},
        )
        assert silent.status_code == 400 and silent.json()["error"]["param"] == "file"


def test_cli_drives_the_server(scribe_server: RunningServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from iatros.cli import app

    runner = CliRunner()
    remote = ["--url", scribe_server.url, "--key", ADMIN_KEY]
    visit = tmp_path / "visit.txt"
    visit.write_text(VISIT)
    made = runner.invoke(
        app,
        [
            "scribe",
            "new",
            "--transcript",
            str(visit),
            "--template",
            "dental",
            "--json",
            *remote,
        ],
    )
    assert made.exit_code == 0, made.output
    # The server runs in this process: its log lines may share the captured output.
    start = made.stdout.index('{\n  "id"')
    eid = json.JSONDecoder().raw_decode(made.stdout[start:])[0]["id"]
    shown = runner.invoke(app, ["scribe", "show", eid, *remote])
    assert "unsupported" in shown.output and "Deep cavity on tooth 36" in shown.output
    assert runner.invoke(app, ["scribe", "sign", eid, "--name", "Dr Roe", *remote]).exit_code == 0
    again = runner.invoke(app, ["scribe", "sign", eid, "--name", "Dr Roe", *remote])
    assert again.exit_code == 1 and "409" in again.output and "already_signed" in again.output
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"not audio at all")
    refused = runner.invoke(app, ["scribe", "transcribe", str(bad), *remote])
    assert refused.exit_code == 1 and "unsupported_audio_format" in refused.output


def test_an_upstream_model_drafts_through_the_chat_service(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """A configured OpenAI-compatible model plugs in: the scribe asks it, over the wire."""
    upstream.reset(delay_ms=0, answer="Deep cavity on tooth 36 with a swollen gum [3].")
    config = speech_config(tmp_path)
    config["providers"]["cloud"] = {"type": "openai", "base_url": upstream.base_url,
                                    "api_key": "upstream-secret"}  # fmt: skip
    config["deployments"]["cloud-gpt"] = {"provider": "cloud", "model": "gpt-fake"}
    config["models"]["scribe-notes"] = {"deployments": ["cloud-gpt"]}
    config["scribe"] = {"model": "scribe-notes"}
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    try:
        with server.http() as http:
            enc = _create(http, template="soap").json()
            sections = enc["note"]["sections"]
            assert [s["model"] for s in sections] == ["cloud-gpt"] * 4
            statement = sections[0]["statements"][0]
            assert statement["text"].startswith("Deep cavity on tooth 36")
            assert statement["lines"] == [3] and not statement["unsupported"]
            asked = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
            assert len(asked) == 4 and asked[0].body["model"] == "gpt-fake"
            prompt = asked[0].body["messages"][-1]["content"]
            assert "L2 Patient: my lower left tooth hurts" in prompt
            for _ in range(50):
                usage = http.get("/admin/usage", params={"group_by": "model"}).json()["data"]
                if usage:
                    break
                time.sleep(0.1)
            assert any(row.get("model") == "scribe-notes" for row in usage), usage
    finally:
        server.stop()
