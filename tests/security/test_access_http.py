"""``AccessControl.require`` on a real FastAPI app over HTTP (TestClient, no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel

from overread.audit import AuditAction, iter_records, verify_chain
from overread.security import (
    AccessControl,
    Permission,
    Principal,
    Role,
    SessionSigner,
    add_user,
    create_tables,
    issue_token,
    redact_phi,
)
from overread.service.db import Database

PASSWORD = "correct horse battery"


class WorklistItem(BaseModel):
    study_instance_uid: str
    patient_name: str
    patient_id: str
    priority: int


class LoginBody(BaseModel):
    username: str
    password: str


def build_app(access: AccessControl) -> FastAPI:
    app = FastAPI()

    @app.get("/worklist")
    def worklist(
        who: Principal = Depends(access.require(Permission.VIEW_WORKLIST)),
    ) -> list[dict[str, Any]]:
        item = WorklistItem(
            study_instance_uid="1.2.3", patient_name="DOE^JANE", patient_id="P1", priority=1
        )
        access.record(who, AuditAction.VIEW, object_uids=[item.study_instance_uid])
        return [redact_phi(item, who)]

    @app.post("/logout")
    def logout(who: Principal = Depends(access.authenticated())) -> dict[str, str]:
        access.logout(who)
        return {"user": who.username}

    @app.post("/users")
    def manage_users(
        who: Principal = Depends(access.require(Permission.MANAGE_USERS)),
    ) -> dict[str, str]:
        return {"by": who.username}

    @app.post("/login")
    def login(body: LoginBody, request: Request, response: Response) -> dict[str, str]:
        source = request.client.host if request.client else ""
        outcome, token = access.login(body.username, body.password, source)
        if not outcome.ok:
            headers = {"Retry-After": str(int(outcome.retry_after or 0) + 1)}
            code = 429 if outcome.reason == "locked" else 401
            raise HTTPException(status_code=code, detail="login failed", headers=headers)
        response.set_cookie(access.cookie_name, token, httponly=True, samesite="strict")
        return {"user": body.username}

    return app


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, Database, dict[str, str]]]:
    db = Database(f"sqlite:///{tmp_path / 'web.db'}", create=False)
    create_tables(db.engine)
    tokens: dict[str, str] = {}
    with db.session() as session:
        for name, role in [
            ("rad", Role.RADIOLOGIST),
            ("admin", Role.ADMIN),
            ("pacs", Role.SERVICE),
        ]:
            add_user(session, name, role, password=PASSWORD, actor="os:root")
            tokens[name], _ = issue_token(session, name, actor="os:root")
        tokens["expired"], _ = issue_token(
            session, "rad", expires_in=timedelta(seconds=-1), actor="os:root"
        )
    access = AccessControl(db.session, SessionSigner(b"k" * 32))
    with TestClient(build_app(access)) as client:
        yield client, db, tokens
    db.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_or_bad_credentials_give_401(setup: tuple[TestClient, Database, dict[str, str]]) -> None:
    client, _, tokens = setup
    response = client.get("/worklist")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/worklist", headers=_bearer("ovr_forged")).status_code == 401
    assert client.get("/worklist", headers=_bearer(tokens["expired"])).status_code == 401
    basic = {"Authorization": "Basic cmFkOnBhc3N3b3Jk"}
    assert client.get("/worklist", headers=basic).status_code == 401


def test_wrong_role_gives_403_and_is_audited(
    setup: tuple[TestClient, Database, dict[str, str]],
) -> None:
    client, db, tokens = setup
    response = client.post("/users", headers=_bearer(tokens["rad"]))
    assert response.status_code == 403
    assert "manage_users" in response.json()["detail"]
    assert client.get("/worklist", headers=_bearer(tokens["pacs"])).status_code == 403
    assert client.post("/users", headers=_bearer(tokens["admin"])).json() == {"by": "admin"}
    with db.session() as session:
        denied = [r for r in iter_records(session) if r.action == AuditAction.ACCESS_DENIED]
    assert [(r.actor, r.details["path"], r.details["permission"]) for r in denied] == [
        ("rad", "/users", "manage_users"),
        ("pacs", "/worklist", "view_worklist"),
    ]
    assert verify_chain(db.engine).ok


def test_phi_is_served_only_to_roles_with_view_phi(
    setup: tuple[TestClient, Database, dict[str, str]],
) -> None:
    client, _, tokens = setup
    as_radiologist = client.get("/worklist", headers=_bearer(tokens["rad"])).json()
    as_admin = client.get("/worklist", headers=_bearer(tokens["admin"])).json()
    assert as_radiologist[0]["patient_name"] == "DOE^JANE"
    assert as_admin == [{"study_instance_uid": "1.2.3", "priority": 1}]


def test_cookie_session_after_login(setup: tuple[TestClient, Database, dict[str, str]]) -> None:
    client, db, _ = setup
    assert (
        client.post("/login", json={"username": "rad", "password": "wrong-pass"}).status_code == 401
    )
    assert "overread_session" not in client.cookies
    response = client.post("/login", json={"username": "rad", "password": PASSWORD})
    assert response.status_code == 200 and "overread_session" in client.cookies
    assert "httponly" in response.headers["set-cookie"].lower()
    assert client.get("/worklist").json()[0]["patient_name"] == "DOE^JANE"
    assert client.post("/users").status_code == 403
    client.cookies.set("overread_session", client.cookies["overread_session"] + "x")
    assert client.get("/worklist").status_code == 401
    with db.session() as session:
        actions = [r.action for r in iter_records(session)]
    assert actions.count(AuditAction.LOGIN_FAILURE) == 1
    assert actions.count(AuditAction.LOGIN_SUCCESS) == 1


def test_views_are_audited_and_logout_ends_sessions(
    setup: tuple[TestClient, Database, dict[str, str]],
) -> None:
    client, db, tokens = setup
    assert client.post("/login", json={"username": "rad", "password": PASSWORD}).status_code == 200
    cookie = client.cookies["overread_session"]
    assert client.get("/worklist").status_code == 200
    assert client.post("/logout").json() == {"user": "rad"}
    client.cookies.set("overread_session", cookie)  # a copied cookie is dead too
    assert client.get("/worklist").status_code == 401
    assert client.get("/worklist", headers=_bearer(tokens["rad"])).status_code == 200  # tokens live
    with db.session() as session:
        events = [r for r in iter_records(session) if r.actor == "rad"]
    views = [(r.object_uids, r.details["via"]) for r in events if r.action == AuditAction.VIEW]
    assert views == [(["1.2.3"], "session"), (["1.2.3"], "token")]
    assert [r.action for r in events if r.action == AuditAction.LOGOUT] == ["logout"]
