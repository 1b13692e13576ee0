"""The web UI without a browser: redirects, CSRF checks, login throttling, headers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from .ui_support import (
    PASSWORD,
    PATIENT_FAMILY,
    PATIENT_ID,
    UiGateway,
    seed_study,
    ui_gateway,
    write_dx,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiGateway]:
    """A gateway with the UI and one critical study on the worklist."""
    folder = tmp_path_factory.mktemp("ui-forms")
    # The stored image is never completed and read: the test controls its worklist row.
    with ui_gateway(folder / "data", stable_seconds=3600) as gw:
        gw.study = seed_study(gw, {"Pneumothorax": 0.9}, department="ED")  # type: ignore[attr-defined]
        # A stored image (not sent to the model) whose header carries the patient.
        dx = write_dx(folder / "stored.dcm", study_uid=generate_uid())
        stored = gw.service.ingestor.ingest_file(dx)
        header = pydicom.dcmread(dx, stop_before_pixels=True)
        gw.imaged = seed_study(  # type: ignore[attr-defined]
            gw,
            {"Cardiomegaly": 0.6},
            uid=str(header.StudyInstanceUID),
            sop_instance_uid=str(header.SOPInstanceUID),
        )
        assert stored is not None
        yield gw


def _client(gw: UiGateway) -> TestClient:
    return TestClient(gw.app, follow_redirects=False)


def _login(client: TestClient, username: str = "dr.grey", password: str = PASSWORD) -> str:
    """Log in through the form; return the session's CSRF token from the next page."""
    form = client.get("/login")
    token = CSRF.search(form.text)
    assert token is not None
    done = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": password},
    )
    assert done.status_code == 303, done.text
    page = client.get("/")
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


def _feedback_count(gw: UiGateway) -> int:
    from overread.triage import Feedback

    with gw.session() as session:
        return int(session.scalar(select(func.count()).select_from(Feedback)) or 0)


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/", "/login"),
        ("/alerts", "/login?next=%2Falerts"),
        ("/studies/1.2.3?finding=Edema", "/login?next=%2Fstudies%2F1.2.3%3Ffinding%3DEdema"),
        ("/admin/jobs", "/login?next=%2Fadmin%2Fjobs"),
        ("/audit", "/login?next=%2Faudit"),
    ],
)
def test_pages_redirect_to_login_without_a_session(
    gateway: UiGateway, path: str, target: str
) -> None:
    response = _client(gateway).get(path)
    assert response.status_code == 303
    assert response.headers["location"] == target


def test_background_refresh_without_a_session_gets_401_not_a_login_page(
    gateway: UiGateway,
) -> None:
    response = _client(gateway).get("/worklist/rows", headers={"X-Overread-Refresh": "1"})
    assert response.status_code == 401
    assert response.headers["x-overread-login"] == "/login"


def test_login_returns_to_the_page_asked_for_but_never_off_site(gateway: UiGateway) -> None:
    client = _client(gateway)
    for asked, landed in [
        ("/alerts", "/alerts"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
    ]:
        client.cookies.clear()
        token = CSRF.search(client.get("/login").text)
        assert token is not None
        response = client.post(
            "/login",
            data={
                "csrf_token": token.group(1),
                "username": "dr.grey",
                "password": PASSWORD,
                "next": asked,
            },
        )
        assert response.status_code == 303
        assert response.headers["location"] == landed, asked


def test_login_form_needs_its_token_and_sets_a_strict_cookie(gateway: UiGateway) -> None:
    client = _client(gateway)
    client.get("/login")
    missing = client.post("/login", data={"username": "dr.grey", "password": PASSWORD})
    assert missing.status_code == 403
    assert "overread_session" not in missing.cookies
    forged = client.post(
        "/login", data={"csrf_token": "x" * 32, "username": "dr.grey", "password": PASSWORD}
    )
    assert forged.status_code == 403
    token = CSRF.search(client.get("/login").text)
    assert token is not None
    good = client.post(
        "/login", data={"csrf_token": token.group(1), "username": "dr.grey", "password": PASSWORD}
    )
    assert good.status_code == 303
    cookie = next(
        h for h in good.headers.get_list("set-cookie") if h.startswith("overread_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie


def test_failed_logins_are_generic_then_locked_and_audited(gateway: UiGateway) -> None:
    from overread.audit import AuditEvent

    client = _client(gateway)
    statuses: list[int] = []
    texts: list[str] = []
    # From the fifth failure each one locks the name for 1 s, 2 s, 4 s ...: a guess
    # during a lockout is refused without checking the password.
    while 429 not in statuses and len(statuses) < 10:
        token = CSRF.search(client.get("/login").text)
        assert token is not None
        response = client.post(
            "/login",
            data={
                "csrf_token": token.group(1),
                "username": "lee.lockout",
                "password": "wrong!wrong",
            },
        )
        statuses.append(response.status_code)
        texts.append(response.text)
    assert statuses[:5] == [401] * 5
    assert all("Invalid user name or password." in t for t in texts[:5])
    assert statuses[-1] == 429 and "Try again later" in texts[-1]
    assert "Invalid user name or password." not in texts[-1]
    with gateway.session() as session:
        failures = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "login-failure", AuditEvent.actor == "lee.lockout"
            )
        ).all()
    reasons = [e.details["reason"] for e in failures]
    assert reasons.count("bad-credentials") == len(statuses) - 1 and reasons[-1] == "locked"


def test_post_forms_without_the_sessions_token_are_refused(gateway: UiGateway) -> None:
    uid = gateway.study  # type: ignore[attr-defined]
    alice, bob = _client(gateway), _client(gateway)
    alice_token = _login(alice)
    bob_token = _login(bob)
    assert alice_token != bob_token  # bound to the session, not the user
    before = _feedback_count(gateway)
    form = {"finding": "Pneumothorax", "verdict": "agree"}
    for token in (None, "", "0" * 64, bob_token):
        data = dict(form) if token is None else {**form, "csrf_token": token}
        refused = alice.post(f"/studies/{uid}/feedback", data=data)
        assert refused.status_code == 403
        assert "security token" in refused.text
    assert _feedback_count(gateway) == before
    refused_logout = alice.post("/logout", data={"csrf_token": bob_token})
    assert refused_logout.status_code == 403
    assert alice.get("/").status_code == 200  # still logged in
    accepted = alice.post(f"/studies/{uid}/feedback", data={**form, "csrf_token": alice_token})
    assert accepted.status_code == 303
    assert _feedback_count(gateway) == before + 1
    by_header = alice.post(
        f"/studies/{uid}/feedback", data=form, headers={"X-CSRF-Token": alice_token}
    )
    assert by_header.status_code == 303
    assert _feedback_count(gateway) == before + 2


def test_roles_without_the_permission_get_a_403_page(gateway: UiGateway) -> None:
    from overread.audit import AuditEvent

    uid = gateway.study  # type: ignore[attr-defined]
    tech = _client(gateway)
    token = _login(tech, "tech.tom")
    refused = tech.post(
        f"/studies/{uid}/feedback",
        data={"finding": "Pneumothorax", "verdict": "agree", "csrf_token": token},
    )
    assert refused.status_code == 403 and "Not allowed" in refused.text
    assert tech.get("/admin/jobs").status_code == 403
    assert tech.get("/audit").status_code == 403
    assert tech.get(f"/studies/{uid}").status_code == 200
    with gateway.session() as session:
        denied = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "access-denied", AuditEvent.actor == "tech.tom"
            )
        ).all()
    assert {e.details["path"] for e in denied} >= {f"/studies/{uid}/feedback", "/admin/jobs"}


def test_pages_carry_security_headers_and_no_outside_resources(gateway: UiGateway) -> None:
    client = _client(gateway)
    _login(client)
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
    assert client.get("/static/overread.js").status_code == 200
    assert client.get("/static/overread.css").status_code == 200


def test_unknown_study_and_bad_feedback_give_pages_not_tracebacks(gateway: UiGateway) -> None:
    client = _client(gateway)
    token = _login(client)
    assert client.get("/studies/1.2.3.4.5").status_code == 404
    assert client.get("/studies/1.2.3.4.5/image.png").status_code == 404
    assert client.get(f"/studies/{gateway.study}/image.png?finding=Nonsense").status_code == 404  # type: ignore[attr-defined]
    uid = gateway.study  # type: ignore[attr-defined]
    bad = client.post(
        f"/studies/{uid}/feedback",
        data={"finding": "Pneumothrax", "verdict": "agree", "csrf_token": token},
    )
    assert bad.status_code == 400 and "unknown finding" in bad.text
    # A study with no stored image (seeded without DICOM) has no picture to show.
    assert client.get(f"/studies/{uid}/image.png").status_code == 404


def test_logout_ends_the_session(gateway: UiGateway, tmp_path: Path) -> None:
    client = _client(gateway)
    token = _login(client, "ada.admin")
    cookie = client.cookies.get("overread_session")
    assert cookie
    out = client.post("/logout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    replay = _client(gateway)
    replay.cookies.set("overread_session", cookie)
    assert replay.get("/admin/jobs").status_code == 303


def test_patient_identity_only_for_roles_with_view_phi(gateway: UiGateway) -> None:
    uid = gateway.imaged  # type: ignore[attr-defined]
    radiologist, admin = _client(gateway), _client(gateway)
    _login(radiologist)
    _login(admin, "ada.admin")
    for path in ("/?state=all", "/worklist/rows?state=all", f"/studies/{uid}"):
        seen = radiologist.get(path)
        assert seen.status_code == 200
        assert PATIENT_FAMILY in seen.text and PATIENT_ID in seen.text, path
        hidden = admin.get(path)
        assert hidden.status_code == 200 and uid in hidden.text
        assert PATIENT_FAMILY not in hidden.text and PATIENT_ID not in hidden.text, path
        assert "ACC-UI-1" not in hidden.text and "19500101" not in hidden.text, path
    # No result, so no model to ask for a heatmap: the image alone.
    image = admin.get(f"/studies/{uid}/image.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["x-overread-image-source"] == "image-only"


def test_reading_state_changes_are_recorded_and_audited(gateway: UiGateway) -> None:
    from overread.audit import AuditEvent
    from overread.triage import get_item

    uid = gateway.imaged  # type: ignore[attr-defined]
    client = _client(gateway)
    token = _login(client)
    started = client.post(
        f"/studies/{uid}/state", data={"state": "in-progress", "csrf_token": token}
    )
    assert started.status_code == 303 and started.headers["location"] == f"/studies/{uid}"
    with gateway.session() as session:
        item = get_item(session, uid)
        assert (item.state, item.reader) == ("in-progress", "dr.grey")
    done = client.post(f"/studies/{uid}/state", data={"state": "read", "csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == "/"
    bad = client.post(f"/studies/{uid}/state", data={"state": "lost", "csrf_token": token})
    assert bad.status_code == 400
    with gateway.session() as session:
        assert get_item(session, uid).state == "read"
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "feedback", AuditEvent.actor == "dr.grey")
        ).all()
    states = [e.details.get("state") for e in events if e.details.get("event") == "read-state"]
    assert states[-2:] == ["in-progress", "read"]


def test_study_page_and_api_show_each_findings_trust_and_uncertainty(gateway: UiGateway) -> None:
    from overread.results import FindingResult
    from overread.security import issue_token
    from overread.service.db import utcnow
    from overread.triage import StudyContext, TriageConfig, upsert_study

    uid = generate_uid()
    findings = [
        FindingResult("Pneumothorax", 0.93, True, 0.1, 0.5).with_values(
            trust_score=0.81,
            map_concentration=0.72,
            deletion_drop=0.91,
            entropy=0.37,
            mutual_information=0.05,
            conformal_set="positive",
        ),
        FindingResult("Edema", 0.2, False, 0.4, 0.5),
    ]
    config = TriageConfig.model_validate(gateway.service.config.triage)
    with gateway.session() as session:
        upsert_study(session, uid, findings, StudyContext(), config, now=utcnow())
        token, _ = issue_token(session, "dr.grey", actor="os:test")
    client = _client(gateway)
    _login(client)
    page = client.get(f"/studies/{uid}")
    assert page.status_code == 200
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r'<tr data-finding="([^"]+)".*?</tr>', page.text, re.S)
    }
    assert 'class="badge trust-high"' in rows["Pneumothorax"]
    assert ">0.81<" in rows["Pneumothorax"] and "high trust" in rows["Pneumothorax"]
    assert "H 0.37" in rows["Pneumothorax"] and "MI 0.05" in rows["Pneumothorax"]
    assert "set: positive" in rows["Pneumothorax"]
    assert rows["Edema"].count("not computed") == 2
    assert 'id="trust-help"' in page.text and 'aria-describedby="trust-help"' in page.text

    reply = client.get(f"/api/worklist/{uid}", headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    served = {f["label"]: f for f in reply.json()["findings"]}
    assert served["Pneumothorax"]["trust_score"] == pytest.approx(0.81)
    assert served["Pneumothorax"]["conformal_set"] == "positive"
    assert served["Pneumothorax"]["mutual_information"] == pytest.approx(0.05)
    assert served["Edema"]["trust_score"] is None and served["Edema"]["entropy"] is None
