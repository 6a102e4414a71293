"""Radiographs: studies, images (pixels and renditions sealed), annotations.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "radiograph_studies",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("patient_ref", sa.String(80), nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("details", sa.LargeBinary, nullable=False),
        sa.Column("signed_at", STAMP, nullable=True),
        sa.Column("signed_by", sa.String(32), nullable=True),
        sa.Index("ix_radiograph_studies_tenant_patient", "tenant_id", "patient_ref"),
    )
    op.create_table(
        "radiograph_images",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column(
            "study_id",
            sa.String(40),
            sa.ForeignKey("radiograph_studies.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("error", sa.String(300), nullable=True),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("meta", sa.LargeBinary, nullable=True),
        sa.Column("pixels", sa.LargeBinary, nullable=True),
        sa.Column("thumbnail", sa.LargeBinary, nullable=True),
        sa.Column("preview", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "radiograph_annotations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column(
            "image_id",
            sa.String(40),
            sa.ForeignKey("radiograph_images.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("study_id", sa.String(40), nullable=False, index=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("author", sa.String(32), nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("radiograph_annotations")
    op.drop_table("radiograph_images")
    op.drop_table("radiograph_studies")
