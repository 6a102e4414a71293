"""The radiograph tables (migration 0010): studies, images, annotations.

In clear are only ids, states, sizes, timestamps and a keyed hash of the patient id:
everything that could identify a patient or describe a finding (the description, the
de-identified header, the pixels, the renditions, the annotations' notes) is sealed
with AES-GCM (:mod:`iatros.clinical.scribe.crypto`), bound to its tenant, row and field.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from iatros.store.models import Base, TenantScoped


class RadiographStudy(TenantScoped, Base):
    __tablename__ = "radiograph_studies"
    __table_args__ = (Index("ix_radiograph_studies_tenant_patient", "tenant_id", "patient_ref"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_ref: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(40))
    details: Mapped[bytes] = mapped_column(LargeBinary)
    """Sealed JSON: patient id, description, conclusion, signer."""
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    signed_by: Mapped[str | None] = mapped_column(String(32))


class RadiographImage(TenantScoped, Base):
    __tablename__ = "radiograph_images"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("radiograph_studies.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    meta: Mapped[bytes | None] = mapped_column(LargeBinary)
    """Sealed JSON: display parameters, the de-identification report, identifier hashes."""
    pixels: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Sealed: the de-identified, masked pixel array (see :mod:`.pixels`). The three
    blobs are deferred: loaded only by the code that reads them, not by every listing
    or progress update (megabytes each for a panoramic)."""
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    preview: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Sealed PNG: the default-window 8-bit rendition (what the analyst and report use)."""


class RadiographAnnotation(TenantScoped, Base):
    __tablename__ = "radiograph_annotations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("radiograph_images.id"), index=True)
    study_id: Mapped[str] = mapped_column(String(40), index=True)
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    author: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    """Sealed JSON: shape, points, finding, tooth, note, confidence, explanation."""
