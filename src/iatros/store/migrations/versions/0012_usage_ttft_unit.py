"""Usage records keep the time to first token and the experiment unit.

``ttft_ms``: for streams, when the first token reached the gateway (an experiment metric
and guardrail; NULL for complete answers and for records written before this).
``unit``: for requests in an experiment, a salted hash of the unit they were assigned
by (key, user or conversation), so the analysis aggregates per unit; NULL otherwise.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("ttft_ms", sa.Float, nullable=True))
        batch.add_column(sa.Column("unit", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("unit")
        batch.drop_column("ttft_ms")
