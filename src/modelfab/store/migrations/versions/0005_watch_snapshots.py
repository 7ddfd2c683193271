"""The loop's latest watch of each live version, exported in /metrics.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watch_snapshots",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(20), nullable=False),
        sa.Column("holdout", sa.Float, nullable=True),
        sa.Column("online", sa.Float, nullable=True),
        sa.Column("labelled", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("psi", sa.JSON, nullable=False),
        sa.Column("prediction_psi", sa.Float, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", "version", name="pk_watch_snapshots"),
    )


def downgrade() -> None:
    op.drop_table("watch_snapshots")
