"""The documented route/permission tables say what the application enforces.

The table is read back from the application (:func:`overread.web.routes.permission_table`,
each route's declared ``x-permission``) and compared with docs/api.md's route
table, docs/security.md's table by permission, and docs/ui.md's page routes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overread.security import Permission
from overread.web.routes import AUTHENTICATED, PUBLIC, api_routes, permission_table

from .conftest import ApiGateway

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROUTE = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s]*)`")
WORDS = {"none": PUBLIC, "signed in": AUTHENTICATED, "any signed-in user": AUTHENTICATED}

Table = dict[tuple[str, str], str]


def _key(method: str, path: str) -> tuple[str, str]:
    """A route with its path parameters unnamed (the docs say ``{uid}``, the code more)."""
    return method, re.sub(r"\{[^}]+\}", "{}", path)


def _permission(cell: str) -> str:
    text = cell.strip()
    if text in WORDS:
        return WORDS[text]
    match = re.fullmatch(r"`([a-z_]+)`", text)
    assert match, f"not a permission: {cell!r}"
    return Permission(match.group(1)).value


def _route_rows(markdown: str) -> Table:
    """The ``| method and path | permission |`` table: a ``| `METHOD /path` |`` row per route."""
    header = "| method and path | permission |"
    assert markdown.count(header) == 1, f"one table starting {header!r}"
    table: Table = {}
    for line in markdown.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = ROUTE.fullmatch(cells[0])
        assert match, f"not a route: {cells[0]!r}"
        if match:
            key = _key(match.group(1), match.group(2))
            assert key not in table, f"{key} documented twice"
            table[key] = _permission(cells[1])
    return table


def _security_table(markdown: str) -> Table:
    """docs/security.md's ``| permission | routes |`` table, its shorthand expanded.

    A path without a method has the method before it; ``.../x`` extends the last
    whole path.
    """
    section = markdown.split("### Which route needs which permission", 1)[1]
    table: Table = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            if table:
                break  # the end of the table
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("permission", "---"):
            continue
        permission = _permission(cells[0])
        method, base = "", ""
        for token in re.findall(r"`([^`]+)`", cells[1]):
            parts = token.split(" ", 1)
            if len(parts) == 2:
                method, path = parts
            else:
                path = parts[0]
            if path.startswith(".../"):
                path = base + path[3:]
            else:
                base = path
            key = _key(method, path)
            assert key not in table, f"{key} listed twice"
            table[key] = permission
    return table


@pytest.fixture
def declared(gateway: ApiGateway) -> tuple[Table, Table]:
    """The application's (API, UI) route tables, path parameters unnamed."""
    hidden = {
        (m, r.path)
        for r in api_routes(gateway.app.routes)
        if not r.include_in_schema
        for m in r.methods
    }
    api: Table = {}
    ui: Table = {}
    for (method, path), permission in permission_table(gateway.app).items():
        (ui if (method, path) in hidden else api)[_key(method, path)] = permission
    return api, ui


def test_every_route_declares_its_permission(gateway: ApiGateway) -> None:
    table = permission_table(gateway.app)
    for route in api_routes(gateway.app.routes):
        if route.path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"):
            continue
        for method in route.methods:
            assert (method, route.path) in table, f"{method} {route.path} declares no permission"


def test_api_md_lists_every_route_with_its_permission(declared: tuple[Table, Table]) -> None:
    api, _ = declared
    assert _route_rows((DOCS / "api.md").read_text()) == api


def test_security_md_groups_every_route_by_its_permission(declared: tuple[Table, Table]) -> None:
    api, _ = declared
    assert _security_table((DOCS / "security.md").read_text()) == api


def test_ui_md_lists_every_page_route_with_its_permission(declared: tuple[Table, Table]) -> None:
    _, ui = declared
    assert ui, "the UI's routes are installed"
    assert _route_rows((DOCS / "ui.md").read_text()) == ui
