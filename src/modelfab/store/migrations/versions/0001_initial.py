"""Initial registry: datasets, runs, jobs, models, versions, aliases and their history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("data_digest", sa.String(64), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("tenant", "name", "version", name="uq_datasets_version"),
        sa.UniqueConstraint("tenant", "name", "digest", name="uq_datasets_digest"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("recipe", sa.String(200), nullable=False),
        sa.Column("recipe_digest", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("dataset_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("priority", sa.String(10), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_runs"),
    )
    op.create_table(
        "jobs",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("partition", sa.String(500), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("model", sa.String(300), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "run_id", "key", name="pk_jobs"),
        sa.ForeignKeyConstraint(["tenant", "run_id"], ["runs.tenant", "runs.id"], name="fk_jobs_run"),
    )
    op.create_table(
        "models",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("recipe", sa.String(200), nullable=True),
        sa.Column("partition", sa.String(500), nullable=True),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", name="pk_models"),
    )
    op.create_index("ix_models_recipe", "models", ["tenant", "recipe", "name"])
    op.create_table(
        "model_versions",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("job_key", sa.String(200), nullable=True),
        sa.Column("metric", sa.String(20), nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("signature", sa.JSON, nullable=False),
        sa.Column("serving", sa.JSON, nullable=False),
        sa.Column("artifact_digest", sa.String(64), nullable=False),
        sa.Column("artifact_size", sa.BigInteger, nullable=False),
        sa.Column("profile_digest", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", "version", name="pk_model_versions"),
        sa.ForeignKeyConstraint(
            ["tenant", "name"], ["models.tenant", "models.name"], name="fk_versions_model"
        ),
        sa.UniqueConstraint("tenant", "run_id", "job_key", name="uq_versions_job"),
    )
    op.create_table(
        "aliases",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", "alias", name="pk_aliases"),
        sa.ForeignKeyConstraint(
            ["tenant", "name", "version"],
            ["model_versions.tenant", "model_versions.name", "model_versions.version"],
            name="fk_aliases_version",
        ),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("previous", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_alias_history_name", "alias_history", ["tenant", "name", "id"])


def downgrade() -> None:
    for table in ("alias_history", "aliases", "model_versions", "models", "jobs", "runs", "datasets"):
        op.drop_table(table)
