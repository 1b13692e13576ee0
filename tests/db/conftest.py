"""Floor fixtures: an empty database URL, SQLite in a temp dir or a fresh PostgreSQL one."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def empty_url(
    request: pytest.FixtureRequest, tmp_path: object, drop_every_table: Callable[[str], None]
) -> str:
    """The URL of a database with no tables at all."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/overread.db"
    url: str = request.getfixturevalue("postgres_module_url")
    drop_every_table(url)
    return url
