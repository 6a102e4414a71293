"""Studies, images and annotations in the store: sealed at rest, scoped to a tenant.

Every blob is sealed with the scribe's :class:`~iatros.clinical.scribe.crypto.Sealer`
(AES-256-GCM, key derived from ``IATROS_SECRET_KEY``) under associated data naming the
tenant, the row and the field, so a blob copied elsewhere does not open. Another
tenant's row is invisible (the session filters by tenant) and answers as unknown.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import delete, select

from iatros.clinical.imaging.models import RadiographAnnotation, RadiographImage, RadiographStudy
from iatros.clinical.scribe.crypto import Sealer
from iatros.errors import Conflict, NotFound
from iatros.store.db import Database


def now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def study_not_found(study_id: str) -> NotFound:
    return NotFound(f"No study {study_id}.", param="study_id", code="study_not_found")


def image_not_found(image_id: str) -> NotFound:
    return NotFound(f"No image {image_id}.", param="image_id", code="image_not_found")


def annotation_not_found(annotation_id: str) -> NotFound:
    return NotFound(
        f"No annotation {annotation_id}.", param="annotation_id", code="annotation_not_found"
    )


@dataclass(slots=True)
class NewImage:
    kind: str
    width: int
    height: int
    modality: str | None


@dataclass(slots=True)
class ImageData:
    """An image's opened content (for renditions, analysis, reports)."""

    id: str
    study_id: str
    patient_ref: str
    status: str
    signed: bool
    width: int
    height: int
    meta: dict[str, Any]
    pixels: bytes | None
    preview: bytes | None
    thumbnail: bytes | None


class RadiographStore:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer

    @staticmethod
    def aad(tenant: str, row: str, field: str) -> str:
        return f"radiographs|{tenant}|{row}|{field}"

    # -- studies ---------------------------------------------------------------------------

    def create_study(self, tenant: str, actor: str, patient_ref: str, details: dict[str, Any],
                     images: list[NewImage]) -> tuple[str, list[str]]:  # fmt: skip
        sid = "rs_" + secrets.token_hex(12)
        ids = ["ri_" + secrets.token_hex(12) for _ in images]
        stamp = now()
        with self.db.session(tenant) as session:
            session.add(RadiographStudy(
                id=sid, tenant_id=tenant, patient_ref=patient_ref, created_at=stamp,
                updated_at=stamp, created_by=actor[:32], status="processing", job_id=None,
                details=self.sealer.seal_json(details, self.aad(tenant, sid, "details")),
            ))  # fmt: skip
            session.flush()
            for n, (iid, img) in enumerate(zip(ids, images, strict=True)):
                session.add(RadiographImage(
                    id=iid, tenant_id=tenant, study_id=sid, position=n, kind=img.kind,
                    status="processing", progress=0.0, width=img.width, height=img.height,
                    modality=img.modality, created_at=stamp, updated_at=stamp,
                ))  # fmt: skip
        return sid, ids

    def drop_study(self, tenant: str, study_id: str) -> None:
        """Undo a study whose processing could not even be queued (nothing half-way)."""
        with self.db.session(tenant) as session:
            session.execute(delete(RadiographAnnotation).where(
                RadiographAnnotation.study_id == study_id))  # fmt: skip
            session.execute(delete(RadiographImage).where(RadiographImage.study_id == study_id))
            session.execute(delete(RadiographStudy).where(RadiographStudy.id == study_id))

    def set_job(self, tenant: str, study_id: str, job_id: str) -> None:
        with self.db.session(tenant) as session:
            row = session.get(RadiographStudy, study_id)
            if row is not None:
                row.job_id = job_id

    def _study_row(self, session: Any, study_id: str) -> RadiographStudy:
        row = session.scalars(select(RadiographStudy).where(RadiographStudy.id == study_id)).first()
        if row is None:
            raise study_not_found(study_id)
        return cast(RadiographStudy, row)

    def details(self, tenant: str, study_id: str) -> dict[str, Any]:
        with self.db.session(tenant) as session:
            row = self._study_row(session, study_id)
            return cast(dict[str, Any], self.sealer.open_json(
                row.details, self.aad(tenant, row.id, "details")))  # fmt: skip

    def study(self, tenant: str, study_id: str) -> dict[str, Any]:
        with self.db.session(tenant) as session:
            return self._study_dict(session, tenant, self._study_row(session, study_id))

    def studies(
        self, tenant: str, patient_ref: str | None, limit: int = 200
    ) -> list[dict[str, Any]]:
        with self.db.session(tenant) as session:
            query = select(RadiographStudy).order_by(RadiographStudy.created_at.desc())
            if patient_ref is not None:
                query = query.where(RadiographStudy.patient_ref == patient_ref)
            rows = session.scalars(query.limit(limit)).all()
            return [self._study_dict(session, tenant, r) for r in rows]

    def _study_dict(self, session: Any, tenant: str, row: RadiographStudy) -> dict[str, Any]:
        details = cast(dict[str, Any], self.sealer.open_json(
            row.details, self.aad(tenant, row.id, "details")))  # fmt: skip
        images = session.scalars(
            select(RadiographImage).where(RadiographImage.study_id == row.id)
            .order_by(RadiographImage.position)
        ).all()  # fmt: skip
        return {
            "id": row.id,
            "object": "radiograph.study",
            "patient": row.patient_ref,
            "status": row.status,
            "description": details.get("description"),
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
            "signed": row.signed_at is not None,
            "signed_at": _iso(row.signed_at),
            "conclusion": details.get("conclusion"),
            "images": [self._image_dict(tenant, i) for i in images],
        }

    def _image_dict(self, tenant: str, row: RadiographImage) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if row.meta is not None:
            meta = cast(dict[str, Any], self.sealer.open_json(
                row.meta, self.aad(tenant, row.id, "meta")))  # fmt: skip
        display = meta.get("display") or {}
        window = ({"center": display["center"], "width": display["width"]}
                  if display.get("center") is not None else None)  # fmt: skip
        return {
            "id": row.id,
            "study_id": row.study_id,
            "status": row.status,
            "progress": round(row.progress, 3),
            "kind": row.kind,
            "width": row.width,
            "height": row.height,
            "pixel_spacing_mm": display.get("pixel_spacing_mm"),
            "window": window,
            "modality": row.modality,
            "deidentified": meta.get("deidentified") or {},
            "error": row.error,
        }

    def sign(self, tenant: str, study_id: str, actor: str, signature: dict[str, Any]) -> None:
        with self.db.session(tenant) as session:
            row = self._study_row(session, study_id)
            if row.signed_at is not None:
                raise Conflict("The study is already signed.", code="study_signed")
            if row.status != "ready":
                raise Conflict(
                    f"The study is {row.status}: only a ready study can be signed.",
                    code="study_not_ready",
                )
            aad = self.aad(tenant, row.id, "details")
            details = cast(dict[str, Any], self.sealer.open_json(row.details, aad))
            details.update(signature)
            stamp = now()
            row.details = self.sealer.seal_json(details, aad)
            row.signed_at = stamp
            row.signed_by = actor[:32]
            row.updated_at = stamp

    def job_of(self, tenant: str, study_id: str) -> str | None:
        with self.db.session(tenant) as session:
            return self._study_row(session, study_id).job_id

    def interrupt(self, tenant: str, study_id: str, reason: str) -> None:
        """A study whose job is gone: images still processing fail, and the study with them
        unless some image was done."""
        with self.db.session(tenant) as session:
            study = self._study_row(session, study_id)
            images = session.scalars(
                select(RadiographImage).where(RadiographImage.study_id == study_id)
            ).all()
            stamp = now()
            for image in images:
                if image.status == "processing":
                    image.status, image.error, image.updated_at = "failed", reason[:300], stamp
            done = any(image.status == "ready" for image in images)
            study.status, study.updated_at = ("ready" if done else "failed"), stamp

    def study_state(self, tenant: str, study_id: str) -> tuple[str, bool]:
        with self.db.session(tenant) as session:
            row = self._study_row(session, study_id)
            return row.status, row.signed_at is not None

    def set_study_status(self, tenant: str, study_id: str, status: str) -> None:
        with self.db.session(tenant) as session:
            row = self._study_row(session, study_id)
            row.status = status
            row.updated_at = now()

    # -- images ----------------------------------------------------------------------------

    def _image_row(self, session: Any, image_id: str) -> RadiographImage:
        row = session.scalars(select(RadiographImage).where(RadiographImage.id == image_id)).first()
        if row is None:
            raise image_not_found(image_id)
        return cast(RadiographImage, row)

    def image_ids(self, tenant: str, study_id: str) -> list[tuple[str, str]]:
        """(id, status) of a study's images, in upload order."""
        with self.db.session(tenant) as session:
            rows = session.execute(
                select(RadiographImage.id, RadiographImage.status)
                .where(RadiographImage.study_id == study_id).order_by(RadiographImage.position)
            ).all()  # fmt: skip
            return [(r[0], r[1]) for r in rows]

    def progress(self, tenant: str, image_id: str, progress: float, status: str | None = None,
                 error: str | None = None) -> None:  # fmt: skip
        with self.db.session(tenant) as session:
            row = self._image_row(session, image_id)
            row.progress = progress
            if status is not None:
                row.status = status
            if error is not None:
                row.error = error[:300]
            row.updated_at = now()

    def store_image(self, tenant: str, image_id: str, *, meta: dict[str, Any], pixels: bytes,
                    preview: bytes, thumbnail: bytes) -> None:  # fmt: skip
        seal = self.sealer.seal
        with self.db.session(tenant) as session:
            row = self._image_row(session, image_id)
            row.meta = self.sealer.seal_json(meta, self.aad(tenant, image_id, "meta"))
            row.pixels = seal(pixels, self.aad(tenant, image_id, "pixels"))
            row.preview = seal(preview, self.aad(tenant, image_id, "preview"))
            row.thumbnail = seal(thumbnail, self.aad(tenant, image_id, "thumbnail"))
            row.status = "ready"
            row.progress = 1.0
            row.error = None
            row.updated_at = now()

    def image(self, tenant: str, image_id: str) -> dict[str, Any]:
        with self.db.session(tenant) as session:
            return self._image_dict(tenant, self._image_row(session, image_id))

    def image_data(self, tenant: str, image_id: str, *fields: str) -> ImageData:
        """The image with the sealed ``fields`` opened (``pixels``, ``preview``, ``thumbnail``)."""
        with self.db.session(tenant) as session:
            row = self._image_row(session, image_id)
            study = self._study_row(session, row.study_id)
            opened: dict[str, bytes | None] = {}
            for name in ("pixels", "preview", "thumbnail"):
                blob = getattr(row, name) if name in fields else None
                opened[name] = (self.sealer.open(blob, self.aad(tenant, image_id, name))
                                if blob is not None else None)  # fmt: skip
            meta = (cast(dict[str, Any], self.sealer.open_json(
                row.meta, self.aad(tenant, image_id, "meta"))) if row.meta else {})  # fmt: skip
            return ImageData(row.id, row.study_id, study.patient_ref, row.status,
                             study.signed_at is not None, row.width, row.height, meta,
                             opened["pixels"], opened["preview"], opened["thumbnail"])  # fmt: skip

    # -- annotations -----------------------------------------------------------------------

    def _ann_dict(self, tenant: str, row: RadiographAnnotation) -> dict[str, Any]:
        content = cast(dict[str, Any], self.sealer.open_json(
            row.content, self.aad(tenant, row.id, "content")))  # fmt: skip
        return {
            "id": row.id,
            "object": "radiograph.annotation",
            "image_id": row.image_id,
            "shape": content["shape"],
            "points": content["points"],
            "finding": content["finding"],
            "tooth": content.get("tooth"),
            "note": content.get("note"),
            "source": row.source,
            "status": row.status,
            "confidence": content.get("confidence"),
            "explanation": content.get("explanation"),
            "author": row.author,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
            "version": row.version,
        }

    def _writable(self, session: Any, study_id: str) -> None:
        study = self._study_row(session, study_id)
        if study.signed_at is not None:
            raise Conflict(
                "The study is signed: its annotations are read-only.", code="study_signed"
            )

    def add_annotations(self, tenant: str, image_id: str, author: str, source: str, status: str,
                        contents: list[dict[str, Any]], *,
                        replace_proposed: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Add annotations in one transaction; ``replace_proposed`` first drops the image's
        AI proposals nobody has accepted or rejected (a new analysis replaces them)."""
        stamp = now()
        with self.db.session(tenant) as session:
            image = self._image_row(session, image_id)
            self._writable(session, image.study_id)
            if replace_proposed:
                session.execute(delete(RadiographAnnotation).where(
                    RadiographAnnotation.image_id == image_id,
                    RadiographAnnotation.source == "ai",
                    RadiographAnnotation.status == "proposed"))  # fmt: skip
            rows = []
            for content in contents:
                aid = "ra_" + secrets.token_hex(12)
                row = RadiographAnnotation(
                    id=aid, tenant_id=tenant, image_id=image_id, study_id=image.study_id,
                    source=source, status=status, version=1, author=author[:32],
                    created_at=stamp, updated_at=stamp,
                    content=self.sealer.seal_json(content, self.aad(tenant, aid, "content")),
                )  # fmt: skip
                session.add(row)
                rows.append(row)
            session.flush()
            return [self._ann_dict(tenant, r) for r in rows]

    def annotations(self, tenant: str, image_id: str) -> list[dict[str, Any]]:
        with self.db.session(tenant) as session:
            self._image_row(session, image_id)
            rows = session.scalars(
                select(RadiographAnnotation).where(RadiographAnnotation.image_id == image_id)
                .order_by(RadiographAnnotation.created_at, RadiographAnnotation.id)
            ).all()  # fmt: skip
            return [self._ann_dict(tenant, r) for r in rows]

    def study_annotations(self, tenant: str, study_id: str) -> list[dict[str, Any]]:
        with self.db.session(tenant) as session:
            rows = session.scalars(
                select(RadiographAnnotation).where(RadiographAnnotation.study_id == study_id)
                .order_by(RadiographAnnotation.created_at, RadiographAnnotation.id)
            ).all()  # fmt: skip
            return [self._ann_dict(tenant, r) for r in rows]

    def annotation(self, tenant: str, annotation_id: str) -> tuple[dict[str, Any], ImageData]:
        """The annotation and its image (sizes to check edited points, patient to audit)."""
        with self.db.session(tenant) as session:
            row = session.scalars(select(RadiographAnnotation).where(
                RadiographAnnotation.id == annotation_id)).first()  # fmt: skip
            if row is None:
                raise annotation_not_found(annotation_id)
            found = self._ann_dict(tenant, row)
        return found, self.image_data(tenant, found["image_id"])

    def update_annotation(
        self, tenant: str, annotation_id: str, version: int, changes: dict[str, Any],
        status: str | None,
    ) -> dict[str, Any]:  # fmt: skip
        with self.db.session(tenant) as session:
            row = session.scalars(select(RadiographAnnotation).where(
                RadiographAnnotation.id == annotation_id)).first()  # fmt: skip
            if row is None:
                raise annotation_not_found(annotation_id)
            self._writable(session, row.study_id)
            if row.version != version:
                raise Conflict(
                    f"The annotation is at version {row.version}, not {version}: reload it.",
                    param="version", code="version_mismatch",
                )  # fmt: skip
            aad = self.aad(tenant, row.id, "content")
            content = cast(dict[str, Any], self.sealer.open_json(row.content, aad))
            content.update(changes)
            row.content = self.sealer.seal_json(content, aad)
            if status is not None:
                row.status = status
            row.version += 1
            row.updated_at = now()
            session.flush()
            return self._ann_dict(tenant, row)

    def delete_annotation(self, tenant: str, annotation_id: str) -> str:
        with self.db.session(tenant) as session:
            row = session.scalars(select(RadiographAnnotation).where(
                RadiographAnnotation.id == annotation_id)).first()  # fmt: skip
            if row is None:
                raise annotation_not_found(annotation_id)
            self._writable(session, row.study_id)
            study_id = row.study_id
            session.delete(row)
            return study_id
