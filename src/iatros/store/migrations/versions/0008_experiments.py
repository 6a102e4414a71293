"""Experiments and rollouts: releases, the active release of each route, experiments, canaries.

Revision ID: 0008
Revises: 0005 (the highest revision present when this was written; 0006 and 0007 are
reserved for other issues: whoever lands them re-chains this one)
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None

STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("route", sa.String(128), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("previous_id", sa.String(40), nullable=True),
        sa.Column("archived_at", STAMP, nullable=True),
        sa.UniqueConstraint("route", "version", name="uq_release_route_version"),
    )
    op.create_table(
        "release_pointers",
        sa.Column("route", sa.String(128), primary_key=True),
        sa.Column("active_id", sa.String(40), nullable=False),
        sa.Column("previous_id", sa.String(40), nullable=True),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("route", sa.String(128), nullable=False, index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("variants", sa.JSON, nullable=False),
        sa.Column("primary_metric", sa.String(32), nullable=False),
        sa.Column("guardrails", sa.JSON, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("started_at", STAMP, nullable=True),
        sa.Column("stopped_at", STAMP, nullable=True),
        sa.Column("decision", sa.JSON, nullable=True),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("route", sa.String(128), nullable=False, index=True),
        sa.Column("baseline_id", sa.String(40), nullable=False),
        sa.Column("candidate_id", sa.String(40), nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("interval_s", sa.Float, nullable=False),
        sa.Column("max_failures", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("step_started_at", STAMP, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at", STAMP, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", STAMP, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
    op.drop_table("experiments")
    op.drop_table("release_pointers")
    op.drop_table("releases")
