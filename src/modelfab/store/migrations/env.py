"""Alembic environment: modelfab runs migrations in-process on a connection it passes in."""

from __future__ import annotations

from alembic import context

from modelfab.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - modelfab always passes its connection
    raise RuntimeError("modelfab migrations run through modelfab.store.db.migrate(), not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
