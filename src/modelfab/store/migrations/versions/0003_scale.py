"""Scale out: job start/finish times, tenant quotas, job slot claims, loop leaders.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("started_at", TS, nullable=True))
        batch.add_column(sa.Column("finished_at", TS, nullable=True))
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("max_jobs", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_quotas"),
    )
    op.create_table(
        "slot_claims",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("driver", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("priority", sa.String(10), nullable=False),
        sa.Column("wanted", sa.Integer, nullable=False),
        sa.Column("claimed", sa.Integer, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "driver", name="pk_slot_claims"),
    )
    op.create_table(
        "loop_leaders",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("recipe", sa.String(200), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "recipe", name="pk_loop_leaders"),
    )


def downgrade() -> None:
    for table in ("loop_leaders", "slot_claims", "tenant_quotas"):
        op.drop_table(table)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("finished_at")
        batch.drop_column("started_at")
