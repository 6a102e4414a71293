"""The audit chain is keyed: each record names the secret that keyed its link.

Existing records keep ``key_id`` NULL and their plain SHA-256 links (they still
verify, and ``iatros audit verify`` counts them as unkeyed).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("key_id", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("key_id")
