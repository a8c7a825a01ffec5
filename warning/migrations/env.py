"""Alembic's environment for floodwarn: always run programmatically, on the connection
the caller passes in ``config.attributes["connection"]`` (see :mod:`warning.migrations`),
inside the caller's transaction (which holds the start-up lock)."""

from alembic import context

from warning.storage import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
