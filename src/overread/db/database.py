"""An engine and a session factory for one database URL, SQLite or PostgreSQL.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` so a
committed row survives power loss; PostgreSQL is reached as
``postgresql+psycopg://``. The same tables and the same code run on both.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from overread.db.schema import SchemaStatus, ensure_schema, schema_status
from overread.errors import ConfigError

logger = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: Any, attempts: int = 100) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    On a new database file several processes (or threads) may switch it to WAL at
    once; SQLite then answers "database is locked" at once instead of calling the
    busy handler (waiting would deadlock on the lock upgrade), so the switch is
    retried for up to about 10 s. Once the file is in WAL mode the pragma is a no-op.
    """
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


class Database:
    """An engine plus a session factory for one database URL.

    Parameters
    ----------
    url
        A SQLAlchemy URL: ``sqlite:///path/overread.db`` (WAL mode is switched on) or
        ``postgresql+psycopg://user@host:5432/db``.
    create
        Make sure the schema is current (the default; what ``overread serve`` does on
        start): a new, empty database is created at the current schema version; an
        older, newer or unknown one is refused (see :meth:`create_tables`).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            # Said without the URL's password (user:password@host).
            shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
            shown = re.sub(r"^([^:/@]*:)[^@/]*@", r"\1***@", shown)
            raise ConfigError(
                f"invalid database URL {shown!r} (expected e.g. sqlite:///path/overread.db or "
                "postgresql+psycopg://user@host:5432/db)"
            ) from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        # A server's connection can drop while pooled (a restart, an idle time-out): it is
        # checked before use. A SQLite connection is a file handle that cannot, and the
        # check was a statement (and a wait for the GIL) per session.
        kwargs: dict[str, Any] = {"pool_pre_ping": self.dialect != "sqlite"}
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                folder = Path(database).parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise ConfigError(f"{folder}: not a folder, cannot hold the database") from None
                except OSError as exc:
                    raise ConfigError(
                        f"{folder}: cannot create the database's folder ({exc.strerror or exc})"
                    ) from None
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except ArgumentError as exc:  # an unknown dialect or driver
            shown = parsed.render_as_string(hide_password=True)
            raise ConfigError(f"invalid database URL {shown!r}: {exc}") from None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            try:
                self.create_tables()
            except BaseException:
                self.engine.dispose()
                raise

    def create_tables(self) -> None:
        """Create every table of a new database; check the schema version of any other.

        An empty database gets every table of every package (gateway, triage, access
        control, audit chain with its head row) by running the migrations, and records
        the schema version. A database at the current version is left as it is.

        Raises
        ------
        DatabaseSchemaError
            If the database was made by an older overread (run ``overread db
            upgrade``), or records a newer or unknown schema version.
        """
        ensure_schema(self.engine)

    def schema_status(self) -> SchemaStatus:
        """Which schema version the database records, compared with this overread's."""
        return schema_status(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({make_url(self.url).render_as_string(hide_password=True)!r})"


__all__ = ["Database"]
