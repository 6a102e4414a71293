"""The encounter store on SQLite and PostgreSQL: migration 0005, sealing, tenant scope,
immutable signed versions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iatros.clinical.scribe.crypto import SealBroken, Sealer
from iatros.clinical.scribe.records import EncounterStore
from iatros.errors import Conflict, NotFound
from iatros.governance.secrets import Keyring
from iatros.store.db import Database, database_url

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture()
def store(db_url: str) -> Iterator[EncounterStore]:
    from pathlib import Path

    db = Database(database_url(db_url, Path(".")))
    db.upgrade()
    yield EncounterStore(db, Sealer(Keyring(SECRET)))
    db.close()


def _new(store: EncounterStore, tenant: str = "clinic-a") -> str:
    return store.create(
        tenant=tenant,
        actor="k1",
        patient_ref="ref",
        template="soap",
        language="en",
        source="transcript",
        transcript={"lines": [{"n": 1, "text": "It hurts.", "speaker": "patient"}]},
        details={"patient": {"id": "p-1", "name": "Jane Roe"}},
        note={"sections": [], "structured": {}},
        audio=b"RIFF....WAVE",
        audio_type="wav",
    )


def test_versions_signing_and_tenants(store: EncounterStore) -> None:
    eid = _new(store)
    assert store.get("clinic-a", eid).details["patient"]["name"] == "Jane Roe"
    with pytest.raises(NotFound):
        store.get("clinic-b", eid)
    with pytest.raises(NotFound):
        store.sign("clinic-b", eid, "k2", {"name": "Mallory"})
    assert store.save_draft("clinic-a", eid, {"sections": [{"id": "plan"}]}, 1) == 1
    assert store.sign("clinic-a", eid, "k1", {"name": "Dr Roe"}) == 1
    with pytest.raises(Conflict):
        store.sign("clinic-a", eid, "k1", {"name": "Dr Roe"})
    with pytest.raises(Conflict):
        store.save_draft("clinic-a", eid, {"sections": []}, None)
    assert store.drop_audio("clinic-a", eid) and store.audio("clinic-a", eid) is None
    assert store.amend("clinic-a", eid, "k1") == 2
    store.save_draft("clinic-a", eid, {"sections": [{"id": "advice"}]}, 2)
    first = store.get("clinic-a", eid, 1)
    assert first.status == "signed" and first.note["sections"] == [{"id": "plan"}]
    assert store.get("clinic-a", eid).note["sections"] == [{"id": "advice"}]
    assert [v["status"] for v in first.versions] == ["signed", "draft"]


def test_sealed_values_open_only_in_their_place_and_with_their_key(
    store: EncounterStore,
) -> None:
    sealer = store.sealer
    blob = sealer.seal_json({"a": 1}, "t|e1|note:1")
    assert sealer.open_json(blob, "t|e1|note:1") == {"a": 1}
    with pytest.raises(SealBroken):
        sealer.open_json(blob, "t|e2|note:1")  # another encounter's place
    rotated = Sealer(Keyring(b"another-secret-of-32-characters!", (SECRET,)))
    assert rotated.open_json(blob, "t|e1|note:1") == {"a": 1}  # the old key still opens
    stranger = Sealer(Keyring(b"another-secret-of-32-characters!"))
    with pytest.raises(SealBroken):
        stranger.open_json(blob, "t|e1|note:1")
