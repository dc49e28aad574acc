"""Alembic environment: runs on the connection farm hands over (see farm.store.db.migrate)."""

from __future__ import annotations

from alembic import context

from farm.store.models import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic` CLI use: build an engine from the URL farm would use
    from farm.store.db import make_engine

    with make_engine(config.get_main_option("sqlalchemy.url") or None).begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
