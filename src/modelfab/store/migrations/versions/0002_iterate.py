"""Iteration loop: indexed prediction rows with feedback, log offsets, deployments, decisions.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "prediction_rows",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("row_index", sa.Integer, nullable=False),
        sa.Column("shadow", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("predicted_at", sa.Float, nullable=False),
        sa.Column("request_key", sa.String(200), nullable=True),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("labelled_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("tenant", "id", "row_index", "shadow", name="pk_prediction_rows"),
    )
    op.create_index(
        "ix_prediction_rows_model", "prediction_rows", ["tenant", "model", "version", "predicted_at"]
    )
    op.create_table(
        "predlog_offsets",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("file", sa.String(255), nullable=False),
        sa.Column("byte_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("source", "file", name="pk_predlog_offsets"),
    )
    op.create_table(
        "deployments",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("champion", sa.Integer, nullable=True),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", name="pk_deployments"),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("champion", sa.Integer, nullable=True),
        sa.Column("challenger", sa.Integer, nullable=True),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_decisions_name", "decisions", ["tenant", "name", "id"])


def downgrade() -> None:
    for table in ("decisions", "deployments", "predlog_offsets", "prediction_rows"):
        op.drop_table(table)
