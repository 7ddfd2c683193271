"""Registry tables (SQLAlchemy Core). Every table carries ``tenant`` from day one.

The Alembic migrations in ``migrations/versions`` create exactly these tables; a test compares them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("data_digest", String(64), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("columns", JSON, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "name", "version", name="uq_datasets_version"),
    UniqueConstraint("tenant", "name", "digest", name="uq_datasets_digest"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("recipe", String(200), nullable=False),
    Column("recipe_digest", String(64), nullable=False),
    Column("dataset", String(200), nullable=False),
    Column("dataset_version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("priority", String(10), nullable=False),
    Column("total", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("spec", JSON, nullable=True),  # the recipe as run (0004)
    PrimaryKeyConstraint("tenant", "id", name="pk_runs"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("key", String(200), nullable=False),
    Column("partition", String(500), nullable=True),
    Column("status", String(20), nullable=False),
    Column("reason", Text, nullable=True),
    Column("model", String(300), nullable=True),
    Column("version", Integer, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "run_id", "key", name="pk_jobs"),
    ForeignKeyConstraint(["tenant", "run_id"], ["runs.tenant", "runs.id"], name="fk_jobs_run"),
)

models = Table(
    "models",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("recipe", String(200), nullable=True),
    Column("partition", String(500), nullable=True),
    Column("latest_version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "name", name="pk_models"),
)
Index("ix_models_recipe", models.c.tenant, models.c.recipe, models.c.name)

model_versions = Table(
    "model_versions",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("run_id", String(64), nullable=True),
    Column("job_key", String(200), nullable=True),
    Column("metric", String(20), nullable=True),
    Column("score", Float, nullable=True),
    Column("metrics", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("lineage", JSON, nullable=False),
    Column("signature", JSON, nullable=False),
    Column("serving", JSON, nullable=False),
    Column("artifact_digest", String(64), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("profile_digest", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "name", "version", name="pk_model_versions"),
    ForeignKeyConstraint(["tenant", "name"], ["models.tenant", "models.name"], name="fk_versions_model"),
    UniqueConstraint("tenant", "run_id", "job_key", name="uq_versions_job"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "name", "alias", name="pk_aliases"),
    ForeignKeyConstraint(
        ["tenant", "name", "version"],
        ["model_versions.tenant", "model_versions.name", "model_versions.version"],
        name="fk_aliases_version",
    ),
)

alias_history = Table(
    "alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version", Integer, nullable=True),
    Column("previous", Integer, nullable=True),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_alias_history_name", alias_history.c.tenant, alias_history.c.name, alias_history.c.id)


# iteration loop
# Every served prediction row, indexed from the servers' prediction logs, with its feedback once it comes.
# One table rather than predictions + feedback: judging a model reads its rows and their outcomes together,
# and feedback becomes a keyed UPDATE (idempotent by construction: last outcome wins, the row counts once).
prediction_rows = Table(
    "prediction_rows",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("row_index", Integer, nullable=False),
    Column("shadow", Boolean, nullable=False),
    Column("model", String(300), nullable=False),
    Column("version", Integer, nullable=False),
    Column("predicted_at", Float, nullable=False),
    Column("request_key", String(200), nullable=True),
    Column("features", Text, nullable=False),
    Column("outputs", Text, nullable=False),
    Column("score", Float, nullable=True),
    Column("label", Text, nullable=True),
    Column("outcome", Text, nullable=True),
    Column("labelled_at", Float, nullable=True),
    PrimaryKeyConstraint("tenant", "id", "row_index", "shadow", name="pk_prediction_rows"),
)
Index(
    "ix_prediction_rows_model",
    prediction_rows.c.tenant,
    prediction_rows.c.model,
    prediction_rows.c.version,
    prediction_rows.c.predicted_at,
)

# How far each prediction log segment has been indexed (``source`` names the server home).
predlog_offsets = Table(
    "predlog_offsets",
    metadata,
    Column("source", String(64), nullable=False),
    Column("file", String(255), nullable=False),
    Column("byte_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("source", "file", name="pk_predlog_offsets"),
)

# The traffic policy of a model under trial: a canary share or a shadow, read by every server's router.
deployments = Table(
    "deployments",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("champion", Integer, nullable=True),
    Column("share", Float, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "name", name="pk_deployments"),
)

# The audit log: every step of the loop and every manual promote or rollback, with its evidence.
decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("action", String(16), nullable=False),
    Column("trigger", String(64), nullable=True),
    Column("version", Integer, nullable=True),
    Column("champion", Integer, nullable=True),
    Column("challenger", Integer, nullable=True),
    Column("evidence", JSON, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
)
Index("ix_decisions_name", decisions.c.tenant, decisions.c.name, decisions.c.id)


# scale out (migration 0003)
# When each job started and finished, written by its run's driver, so a quota can be audited afterwards.
jobs.append_column(Column("started_at", DateTime(timezone=True), nullable=True))
jobs.append_column(Column("finished_at", DateTime(timezone=True), nullable=True))

# The most jobs a tenant's runs may have running at once, across every driver sharing the registry.
tenant_quotas = Table(
    "tenant_quotas",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("max_jobs", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", name="pk_tenant_quotas"),
)

# Job slots held by each live run driver: what it wants, what it holds, and its heartbeat. A row whose
# heartbeat is older than the lease belongs to a dead driver and no longer counts.
slot_claims = Table(
    "slot_claims",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("driver", String(64), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("priority", String(10), nullable=False),
    Column("wanted", Integer, nullable=False),
    Column("claimed", Integer, nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "driver", name="pk_slot_claims"),
)

# Which loop process leads each recipe (for people and tests; the lock itself is a database or file lock).
loop_leaders = Table(
    "loop_leaders",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("recipe", String(200), nullable=False),
    Column("holder", String(200), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "recipe", name="pk_loop_leaders"),
)

# The loop's latest watch of each live version (online metric, drift), for /metrics and dashboards.
watch_snapshots = Table(
    "watch_snapshots",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("version", Integer, nullable=False),
    Column("metric", String(20), nullable=False),
    Column("holdout", Float, nullable=True),
    Column("online", Float, nullable=True),
    Column("labelled", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("psi", JSON, nullable=False),
    Column("prediction_psi", Float, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant", "name", "version", name="pk_watch_snapshots"),
)
