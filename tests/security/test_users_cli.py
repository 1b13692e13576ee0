"""``overread users add/list/token`` against a real SQLite database."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from overread.audit import AuditAction, iter_records
from overread.security import authenticate, resolve_token
from overread.service.db import Database


def test_users_add_list_token(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    status, out, _ = run_cli(
        "users", "add", "alice", "--role", "radiologist", "--password-stdin", "--database-url", url
    )
    assert status == 0 and "added alice (radiologist, password)" in out
    status, out, _ = run_cli("users", "add", "pacs", "--role", "service", "--database-url", url)
    assert status == 0 and "token-only" in out

    status, _, err = run_cli("users", "add", "alice", "--role", "admin", "--database-url", url)
    assert status == 2 and "already exists" in err
    status, _, err = run_cli("users", "add", "bob", "--role", "root", "--database-url", url)
    assert status == 2 and "unknown role" in err

    status, out, _ = run_cli("users", "list", "--database-url", url)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 2
    assert lines[0].split("\t")[:4] == ["alice", "radiologist", "active", "password"]
    assert lines[1].split("\t")[:4] == ["pacs", "service", "active", "token-only"]

    status, out, err = run_cli(
        "users", "token", "pacs", "--expires-days", "7", "--database-url", url
    )
    token = out.strip()
    assert status == 0 and token.startswith("ovr_") and "expires" in err
    status, _, err = run_cli("users", "token", "nobody", "--database-url", url)
    assert status == 2 and "no user called" in err

    database = Database(url, create=False)
    with database.session() as session:
        principal = resolve_token(session, token)
        assert principal is not None and principal.username == "pacs"

    status, out, _ = run_cli("users", "tokens", "pacs", "--database-url", url)
    assert status == 0 and out.split("\t")[:3] == ["1", "service", "active"]
    status, out, _ = run_cli("users", "revoke-token", "1", "--database-url", url)
    assert status == 0 and "revoked token 1" in out
    status, out, _ = run_cli("users", "tokens", "pacs", "--database-url", url)
    assert out.split("\t")[2] == "revoked"
    with database.session() as session:
        assert resolve_token(session, token) is None
    status, _, err = run_cli("users", "revoke-token", "99", "--database-url", url)
    assert status == 2 and "no API token with id 99" in err
    status, out, err = run_cli("users", "token", "pacs", "--database-url", url)
    token = out.strip()
    assert "token 2 for pacs" in err

    status, out, _ = run_cli("users", "disable", "pacs", "--database-url", url)
    assert status == 0 and "disabled pacs" in out
    with database.session() as session:
        assert resolve_token(session, token) is None
    status, out, _ = run_cli("users", "enable", "pacs", "--database-url", url)
    assert status == 0 and "enabled pacs" in out
    with database.session() as session:
        assert resolve_token(session, token) is not None

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    status, _, err = run_cli("users", "password", "alice", "--database-url", url)
    assert status == 2 and "too short" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
    status, out, _ = run_cli("users", "password", "alice", "--database-url", url)
    assert status == 0 and "password changed for alice" in out
    with database.session() as session:
        assert authenticate(session, "alice", "another long password").ok
        actions = [r.action for r in iter_records(session)]
    assert actions == [
        AuditAction.USER_CHANGE,  # add alice
        AuditAction.USER_CHANGE,  # add pacs
        AuditAction.TOKEN_ISSUED,
        AuditAction.USER_CHANGE,  # revoke token 1
        AuditAction.TOKEN_ISSUED,
        AuditAction.USER_CHANGE,  # disable
        AuditAction.USER_CHANGE,  # enable
        AuditAction.USER_CHANGE,  # password
        AuditAction.LOGIN_SUCCESS,
    ]
    database.dispose()
