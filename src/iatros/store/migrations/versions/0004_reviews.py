"""The human review queue (escalations and approvals), webhook deliveries, and the
grounding outcome of each request in the usage journal, and capabilities a key has
beside its role (``reviewer``).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("asker_key_id", sa.String(32), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(40), nullable=True),
        sa.Column("route", sa.String(128), nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("excerpt", sa.JSON, nullable=False),
        sa.Column("sources", sa.JSON, nullable=False),
        sa.Column("draft", sa.Text, nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("due_at", STAMP, nullable=True),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("claimed_at", STAMP, nullable=True),
        sa.Column("answered_by", sa.String(32), nullable=True),
        sa.Column("reviewer_name", sa.String(128), nullable=True),
        sa.Column("answered_at", STAMP, nullable=True),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("document_id", sa.String(64), nullable=True),
        sa.Index("ix_review_items_tenant_status", "tenant_id", "status", "created_at"),
        sa.Index("ix_review_items_asker", "tenant_id", "asker_key_id", "conversation_id"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(512), nullable=False),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("next_attempt_at", STAMP, nullable=True),
        sa.Column("delivered_at", STAMP, nullable=True),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(
            sa.Column("grounding", sa.String(16), nullable=False, server_default="")
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("capabilities", sa.String(256), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("capabilities")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("grounding")
    op.drop_table("webhook_deliveries")
    op.drop_table("review_items")
