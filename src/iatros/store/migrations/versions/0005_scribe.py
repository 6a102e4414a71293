"""The clinical scribe: encounters and their note versions (sealed with AES-GCM).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scribe_encounters",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("patient_ref", sa.String(80), nullable=True),
        sa.Column("template", sa.String(32), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("transcript", sa.LargeBinary, nullable=False),
        sa.Column("details", sa.LargeBinary, nullable=False),
        sa.Column("audio", sa.LargeBinary, nullable=True),
        sa.Column("audio_type", sa.String(16), nullable=True),
        sa.Column("audio_deleted_at", STAMP, nullable=True),
        sa.Index("ix_scribe_encounters_tenant_created", "tenant_id", "created_at"),
    )
    op.create_table(
        "scribe_note_versions",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column(
            "encounter_id",
            sa.String(40),
            sa.ForeignKey("scribe_encounters.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("signed_at", STAMP, nullable=True),
        sa.Column("signed_by", sa.String(32), nullable=True),
        sa.Column("content_sha256", sa.String(64), nullable=True),
        sa.UniqueConstraint("encounter_id", "version", name="uq_scribe_note_version"),
    )


def downgrade() -> None:
    op.drop_table("scribe_note_versions")
    op.drop_table("scribe_encounters")
