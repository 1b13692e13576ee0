"""Schema versions: what a database records, and moving it to this overread's.

The schema is defined by Alembic revisions shipped in :mod:`overread.db.migrations`
and run from code (no ``alembic.ini``). The database records its revision in
``alembic_version``. Revision ids are four-digit sequence numbers (``0001``,
``0002``, ...), so an overread can tell a schema newer than itself (a higher number
it does not ship) from one it does not know at all.

A new, empty database is created at the current revision when it is opened; any
other change is explicit (``overread db upgrade``), because several processes (the
gateway and ``overread worker`` on other hosts) share one database and a schema
change wants a backup first.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from overread.errors import DatabaseSchemaError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"

# Every table of the last release before the schema was versioned: the baseline
# revision. A database with any of them but no recorded version was made by it.
BASELINE_TABLES = frozenset(
    {
        "alert_deliveries",
        "alerts",
        "api_tokens",
        "audit_chain_head",
        "audit_events",
        "feedback",
        "instances",
        "jobs",
        "login_throttle",
        "results",
        "studies",
        "users",
        "worklist_items",
    }
)

# Key of the PostgreSQL advisory lock that serialises schema changes between processes.
_SCHEMA_LOCK_KEY = 0x6F766572  # "over"


class SchemaState(enum.StrEnum):
    """How a database's schema compares with this overread's."""

    EMPTY = "empty"
    """None of overread's tables: created at the current revision when opened."""
    UNVERSIONED = "unversioned"
    """overread's tables without a recorded revision: made before schemas were versioned."""
    OLDER = "older"
    """An earlier revision of this overread's: ``overread db upgrade`` moves it forward."""
    CURRENT = "current"
    """This overread's revision."""
    NEWER = "newer"
    """A later revision than this overread ships: made by a newer overread."""
    UNKNOWN = "unknown"
    """A revision this overread does not know and cannot place."""


@dataclass(frozen=True)
class SchemaStatus:
    """The revision a database records, against this overread's head revision."""

    state: SchemaState
    revision: str | None
    head: str
    where: str = "the database"

    @property
    def usable(self) -> bool:
        """Whether this overread can run on the database as it is (or create it)."""
        return self.state in (SchemaState.CURRENT, SchemaState.EMPTY)

    def describe(self) -> str:
        """One line for ``overread db current``."""
        if self.state is SchemaState.CURRENT:
            return f"{self.revision} (current)"
        if self.state is SchemaState.EMPTY:
            return f"none (empty database; it is created at {self.head} when the gateway starts)"
        if self.state is SchemaState.UNVERSIONED:
            return f"none (unversioned, older than {self.head}; run `overread db upgrade`)"
        if self.state is SchemaState.OLDER:
            return f"{self.revision} (older than {self.head}; run `overread db upgrade`)"
        if self.state is SchemaState.NEWER:
            return f"{self.revision} (newer than this overread's {self.head})"
        return f"{self.revision} (unknown to this overread, which is at {self.head})"

    def refusal(self) -> str:
        """Why this overread will not run on the database, and what to do (one line)."""
        if self.state is SchemaState.NEWER:
            return (
                f"database schema {self.revision} is newer than this overread ({self.head}); "
                f"run the overread release that upgraded {self.where}, or a later one"
            )
        if self.state is SchemaState.UNKNOWN:
            return (
                f"database schema {self.revision} is unknown to this overread ({self.head}); "
                f"is {self.where} another application's database?"
            )
        if self.state is SchemaState.OLDER:
            return (
                f"database schema {self.revision} is older than this overread ({self.head}); "
                f"back up {self.where} and run `overread db upgrade`"
            )
        if self.state is SchemaState.UNVERSIONED:
            return (
                f"database schema is unversioned, older than this overread ({self.head}); "
                f"back up {self.where} and run `overread db upgrade`"
            )
        return f"database schema {self.revision or 'none'} is usable ({self.head})"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for overread's migrations, built in code.

    Parameters
    ----------
    connection
        The connection the migrations run on (handed to ``migrations/env.py``).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    # New revision files are valid module names: r0002_add_something.py.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this overread's models are at."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the baseline always exists
        raise DatabaseSchemaError(f"no schema revisions found in {MIGRATIONS_DIR}")
    return head


def _known(revision: str) -> bool:
    return any(script.revision == revision for script in _script().walk_revisions())


def _where(bind: Engine | Connection) -> str:
    return bind.engine.url.render_as_string(hide_password=True)


@contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def schema_status(bind: Engine | Connection) -> SchemaStatus:
    """Which revision ``bind``'s database records, compared with this overread's head."""
    head = head_revision()
    where = _where(bind)
    with _connection(bind) as conn:
        tables = set(inspect(conn).get_table_names())
        revisions: list[str] = []
        if VERSION_TABLE in tables:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            revisions = sorted(str(row[0]) for row in rows)
    if not revisions:
        state = SchemaState.UNVERSIONED if tables & BASELINE_TABLES else SchemaState.EMPTY
        return SchemaStatus(state, None, head, where)
    revision = ",".join(revisions)
    if len(revisions) > 1:
        return SchemaStatus(SchemaState.UNKNOWN, revision, head, where)
    if revision == head:
        state = SchemaState.CURRENT
    elif _known(revision):
        state = SchemaState.OLDER
    elif revision.isdigit() and head.isdigit() and int(revision) > int(head):
        state = SchemaState.NEWER
    else:
        state = SchemaState.UNKNOWN
    return SchemaStatus(state, revision, head, where)


@contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction, DDL included, holding the lock that serialises schema changes.

    PostgreSQL: an advisory lock, released at commit (its DDL is transactional).
    SQLite: ``BEGIN IMMEDIATE`` (the write lock) issued by hand, because the
    driver would otherwise run each ``CREATE`` outside any transaction; a failed
    migration then leaves nothing behind, and a second process starting on the same
    new database waits and finds it created.
    """
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY}
                    )
                yield conn
            return
        driver = conn.connection.driver_connection
        saved = getattr(driver, "isolation_level", None)
        driver.isolation_level = None  # type: ignore[union-attr]
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
        finally:
            driver.isolation_level = saved  # type: ignore[union-attr]


def _upgrade(conn: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(conn), "head")


def ensure_schema(engine: Engine) -> SchemaStatus:
    """Create a new database at the current revision; refuse any other not at it.

    Raises
    ------
    DatabaseSchemaError
        If the database is unversioned or older (the message says to run ``overread
        db upgrade``), newer, or unknown.
    """
    status = schema_status(engine)
    if status.state is SchemaState.EMPTY:
        with _schema_transaction(engine) as conn:
            status = schema_status(conn)
            if status.state is SchemaState.EMPTY:
                _upgrade(conn)
                status = schema_status(conn)
    if status.state is not SchemaState.CURRENT:
        raise DatabaseSchemaError(status.refusal())
    return status


def upgrade_schema(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """Move the database to this overread's revision; return the status before and after.

    An empty database is created; one made before schemas were versioned is adopted
    as the baseline (any table that release would have created on start is created,
    then the revision is recorded); an older one is migrated forward.

    Raises
    ------
    DatabaseSchemaError
        If the database records a newer or unknown revision.
    """
    with _schema_transaction(engine) as conn:
        before = schema_status(conn)
        if before.state in (SchemaState.NEWER, SchemaState.UNKNOWN):
            raise DatabaseSchemaError(before.refusal())
        if before.state is not SchemaState.CURRENT:
            _upgrade(conn)
        after = schema_status(conn)
    return before, after


__all__ = [
    "BASELINE_TABLES",
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "SchemaState",
    "SchemaStatus",
    "alembic_config",
    "ensure_schema",
    "head_revision",
    "schema_status",
    "upgrade_schema",
]
