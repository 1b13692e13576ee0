"""Result and job ids are never reused (SQLite).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

SQLite hands the id of a deleted row with the highest id to the next row unless the
table is declared ``AUTOINCREMENT``. Retention deletes results and jobs, and their
ids live on elsewhere (a review row, an export payload, a reader's verdict naming the
result it saw, the audit trail), so a reused id could make one of them reach a newer,
different result. On SQLite ``results`` and ``jobs`` are rebuilt (a copy of each table) as
``AUTOINCREMENT`` tables and their counters start above every id still referenced;
PostgreSQL's sequences never reuse a value and are left as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: Each rebuilt table, and the (table, column) pairs that reference its ids.
_REFERENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "results": (
        ("results", "id"),
        ("result_reviews", "result_id"),
        ("model_rollout_results", "result_id"),
        ("study_observations", "result_id"),
    ),
    "jobs": (("jobs", "id"), ("results", "job_id")),
}


def _recreate(bind: sa.Connection, name: str, autoincrement: bool) -> None:
    """Rebuild one SQLite table as it is, with or without ``AUTOINCREMENT``: the rows,
    columns, constraints and indexes stay (the DDL is the models' own, unquoted name
    included, which a rebuild through ``ALTER TABLE ... RENAME`` would not keep)."""
    old = sa.Table(name, sa.MetaData(), autoload_with=bind)
    meta = sa.MetaData()
    new = old.to_metadata(meta)
    new.dialect_kwargs["sqlite_autoincrement"] = autoincrement
    columns = ", ".join(f'"{c.name}"' for c in old.columns)
    scratch = f"_overread_old_{name}"
    for index in old.indexes:
        op.execute(f'DROP INDEX "{index.name}"')
    op.execute(f'ALTER TABLE "{name}" RENAME TO "{scratch}"')
    new.create(bind)
    op.execute(f'INSERT INTO "{name}" ({columns}) SELECT {columns} FROM "{scratch}"')
    op.execute(f'DROP TABLE "{scratch}"')


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in _REFERENCES:
        _recreate(bind, table, autoincrement)
    if not autoincrement:
        return
    present = set(sa.inspect(bind).get_table_names())
    for table, references in _REFERENCES.items():
        highest = 0
        for name, column in references:
            if name in present:
                value = bind.execute(sa.text(f"SELECT MAX({column}) FROM {name}")).scalar()
                highest = max(highest, int(value or 0))
        # The counter starts above every id still named anywhere, even one whose row
        # was deleted before this revision.
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"),
            {"t": table, "s": highest},
        )


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
