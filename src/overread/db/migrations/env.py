"""Alembic's environment: run the migrations on the connection overread hands over.

:func:`overread.db.schema.alembic_config` puts an open connection in the
configuration's ``attributes`` (and, for autogenerating a revision, the models'
``target_metadata``); nothing here imports overread's models.
"""

from __future__ import annotations

from alembic import context

_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError(
        "overread's migrations run on a connection passed in config.attributes; "
        "use `overread db upgrade`"
    )
context.configure(
    connection=_connection,
    target_metadata=context.config.attributes.get("target_metadata"),
)
with context.begin_transaction():
    context.run_migrations()
