"""What the REST API does, on a gateway's real database: PHI by role, audited views,
claims and reading states, feedback, alert acknowledgement, model aliases, audit
export and verification, and password login with lockout."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent, verify_chain
from overread.security import LockoutPolicy, Role
from overread.triage.schema import Alert, Feedback, WorklistItem

from .conftest import PASSWORD, PATIENT_ID, ApiGateway, seed_study

pytestmark = pytest.mark.service


def _events(gateway: ApiGateway, action: AuditAction) -> list[AuditEvent]:
    with gateway.service.database.session() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action.value).order_by(AuditEvent.seq)
            )
        )


def test_the_api_worklist_puts_the_band_before_the_score(gateway: ApiGateway) -> None:
    """A study a reader (or the RIS) marked urgent comes before a routine one with a
    higher score."""
    from overread.service.db import utcnow
    from overread.triage.schema import Priority, PrioritySource
    from overread.triage.worklist import set_priority

    calm, _, _ = seed_study(gateway.service, critical=False)
    with gateway.service.database.session() as session:
        for uid, band in ((calm, Priority.URGENT), (gateway.study_uid, Priority.ROUTINE)):
            set_priority(session, uid, band, source=PrioritySource.READER, who="dr.r", now=utcnow())
    page = gateway.client.get("/api/worklist", headers=gateway.headers(Role.RADIOLOGIST)).json()
    first, second = page["items"]
    assert first["study_instance_uid"] == calm and first["score"] < second["score"]


def test_worklist_is_prioritised_filtered_and_phi_follows_the_role(
    gateway_any_db: ApiGateway,
) -> None:
    gateway = gateway_any_db
    calm, _, _ = seed_study(gateway.service, critical=False)
    client = gateway.client
    page = client.get("/api/worklist", headers=gateway.headers(Role.RADIOLOGIST)).json()
    assert page["total"] == 2 and page["limit"] == 50 and page["offset"] == 0
    first, second = page["items"]
    assert (first["study_instance_uid"], second["study_instance_uid"]) == (gateway.study_uid, calm)
    assert first["score"] > second["score"] and first["has_critical"] is True
    assert first["patient_id"] == PATIENT_ID
    assert {t["name"] for t in first["breakdown"]} >= {"department"}
    assert sum(t["contribution"] for t in first["breakdown"]) == pytest.approx(
        first["score"], abs=0.01
    )

    as_admin = client.get("/api/worklist", headers=gateway.headers(Role.ADMIN)).json()
    assert [i["study_instance_uid"] for i in as_admin["items"]] == [gateway.study_uid, calm]
    assert all("patient_id" not in i for i in as_admin["items"])

    critical = client.get(
        "/api/worklist", params={"critical": "true"}, headers=gateway.headers(Role.AUDITOR)
    ).json()
    assert [i["study_instance_uid"] for i in critical["items"]] == [gateway.study_uid]
    paged = client.get(
        "/api/worklist", params={"limit": 1, "offset": 1}, headers=gateway.headers(Role.ADMIN)
    ).json()
    assert [i["study_instance_uid"] for i in paged["items"]] == [calm] and paged["total"] == 2
    none = client.get(
        "/api/worklist", params={"modality": "CT"}, headers=gateway.headers(Role.ADMIN)
    ).json()
    assert none == {"items": [], "total": 0, "limit": 50, "offset": 0}

    views = _events(gateway, AuditAction.VIEW)
    assert [(v.actor, v.details["phi"]) for v in views] == [
        ("radiologist-user", True),
        ("admin-user", False),
        ("auditor-user", False),
        ("admin-user", False),
    ]
    assert views[0].object_uids == [gateway.study_uid, calm]


def test_claim_and_reading_state_record_the_reader(gateway: ApiGateway) -> None:
    client, rad = gateway.client, gateway.headers(Role.RADIOLOGIST)
    claimed = client.post("/api/worklist/claim", headers=rad)
    assert claimed.status_code == 200
    assert claimed.json()["study_instance_uid"] == gateway.study_uid
    assert (
        claimed.json()["state"] == "in-progress" and claimed.json()["reader"] == "radiologist-user"
    )
    assert client.post("/api/worklist/claim", headers=rad).status_code == 204  # nothing left
    read = client.put(
        f"/api/worklist/{gateway.study_uid}/state", json={"state": "read"}, headers=rad
    )
    assert read.status_code == 200 and read.json()["state"] == "read"
    bad = client.put(
        f"/api/worklist/{gateway.study_uid}/state", json={"state": "done"}, headers=rad
    )
    assert bad.status_code == 422
    unknown = client.put("/api/worklist/1.2.3/state", json={"state": "read"}, headers=rad)
    assert unknown.status_code == 404
    item = client.get(f"/api/worklist/{gateway.study_uid}", headers=rad).json()
    assert item["state"] == "read" and item["reader"] == "radiologist-user"


def test_feedback_is_stored_with_who_and_when_audited_and_exported(gateway: ApiGateway) -> None:
    client, rad = gateway.client, gateway.headers(Role.RADIOLOGIST)
    url = f"/api/studies/{gateway.study_uid}/feedback"
    posted = client.post(url, json={"finding": "Pneumothorax", "verdict": "disagree"}, headers=rad)
    assert posted.status_code == 201
    body = posted.json()
    assert body["reader"] == "radiologist-user" and body["label"] == 0.0
    assert body["probability"] == pytest.approx(0.93) and body["created_at"]
    labelled = client.post(
        url, json={"finding": "Cardiomegaly", "verdict": "label", "label": 1}, headers=rad
    )
    assert labelled.status_code == 201 and labelled.json()["label"] == 1.0
    assert (
        client.post(url, json={"finding": "Nonsense", "verdict": "agree"}, headers=rad).status_code
        == 422
    )
    assert (
        client.post(url, json={"finding": "Edema", "verdict": "label"}, headers=rad).status_code
        == 422
    )  # a final label needs its value
    with gateway.service.database.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        assert [(r.finding, r.verdict, r.reader) for r in rows] == [
            ("Pneumothorax", "disagree", "radiologist-user"),
            ("Cardiomegaly", "label", "radiologist-user"),
        ]
    audited = _events(gateway, AuditAction.FEEDBACK)
    assert [(e.actor, e.role, e.details["finding"]) for e in audited] == [
        ("radiologist-user", "radiologist", "Pneumothorax"),
        ("radiologist-user", "radiologist", "Cardiomegaly"),
    ]
    listed = client.get(
        "/api/feedback", params={"finding": "Pneumothorax"}, headers=gateway.headers(Role.ADMIN)
    ).json()
    assert listed["total"] == 1 and listed["items"][0]["verdict"] == "disagree"

    export = client.get("/api/feedback/export", headers=gateway.headers(Role.SERVICE))
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    header, row = export.text.strip().splitlines()
    columns = dict(zip(header.split(","), row.split(","), strict=True))
    assert columns["StudyInstanceUID"] == gateway.study_uid
    assert columns["Pneumothorax"] == "0.0" and columns["Cardiomegaly"] == "1.0"
    assert columns["PatientID"] == "" and PATIENT_ID not in export.text  # no view_phi
    [exported] = _events(gateway, AuditAction.EXPORT)
    assert exported.actor == "service-user" and exported.details["studies"] == 1


def test_alert_acknowledgement_is_audited_and_idempotent(gateway_any_db: ApiGateway) -> None:
    gateway = gateway_any_db
    client, rad = gateway.client, gateway.headers(Role.RADIOLOGIST)
    listed = client.get("/api/alerts", params={"state": "open"}, headers=rad).json()
    assert [(a["id"], a["finding"]) for a in listed["items"]] == [
        (gateway.alert_id, "Pneumothorax")
    ]
    url = f"/api/alerts/{gateway.alert_id}/acknowledge"
    told = {"communicated_to": "Dr Ward, ED", "note": "by phone"}
    # Who was told is required: closed-loop critical-result communication.
    assert client.post(url, headers=rad).status_code == 422
    assert client.post(url, json={"communicated_to": ""}, headers=rad).status_code == 422
    acked = client.post(url, json=told, headers=rad)
    assert acked.status_code == 200
    assert acked.json()["state"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == "radiologist-user"
    assert (acked.json()["communicated_to"], acked.json()["note"]) == ("Dr Ward, ED", "by phone")
    again = client.post(url, json={"communicated_to": "someone else"}, headers=rad).json()
    assert again["communicated_to"] == "Dr Ward, ED"
    assert again["acknowledged_at"] == acked.json()["acknowledged_at"]
    assert client.post("/api/alerts/999999/acknowledge", json=told, headers=rad).status_code == 404
    assert client.get("/api/alerts", params={"state": "open"}, headers=rad).json()["total"] == 0
    with gateway.service.database.session() as session:
        alert = session.get(Alert, gateway.alert_id)
        assert alert is not None and alert.acknowledged_by == "radiologist-user"
    events = [
        e for e in _events(gateway, AuditAction.ALERT) if e.details["event"] == "acknowledged"
    ]
    assert [(e.actor, e.object_uids) for e in events] == [("radiologist-user", [gateway.study_uid])]
    assert verify_chain(gateway.service.database.engine).ok


def test_switching_a_model_alias_is_audited_as_a_model_change(gateway: ApiGateway) -> None:
    client, admin = gateway.client, gateway.headers(Role.ADMIN)
    listed = client.get("/api/models", headers=admin).json()
    bundled = next(p for p in listed["packages"] if p["name"] == "cxr-default")
    target = f"cxr-default@{bundled['version']}"
    switched = client.put(
        "/api/models/aliases/chest", json={"target": "cxr-default"}, headers=admin
    )
    assert switched.status_code == 200
    assert switched.json() == {"alias": "chest", "target": target, "previous": None}
    shown = client.get("/api/models/chest", headers=admin).json()
    assert shown["resolves_to"] == target and shown["manifest"]["name"] == "cxr-default"
    assert client.get("/api/models", headers=admin).json()["aliases"] == {"chest": target}
    missing = client.put(
        "/api/models/aliases/chest", json={"target": "no-such-model"}, headers=admin
    )
    assert missing.status_code == 404
    assert client.post("/api/models/aliases/chest/rollback", headers=admin).status_code == 409
    assert client.get("/api/models/no-such-model", headers=admin).status_code == 404
    [change] = _events(gateway, AuditAction.MODEL_CHANGE)
    assert (change.actor, change.role) == ("admin-user", "admin")
    assert change.details == {
        "change": "set-alias", "alias": "chest", "from": None, "to": target, "via": "token"
    }  # fmt: skip
    assert (gateway.service.registry.root / "aliases.json").is_file()


def test_audit_trail_is_listed_exported_and_verified(gateway: ApiGateway) -> None:
    client, auditor = gateway.client, gateway.headers(Role.AUDITOR)
    events = client.get("/api/audit/events", params={"action": "alert"}, headers=auditor).json()
    assert events["total"] == 1 and events["items"][0]["object_uids"] == [gateway.study_uid]
    by_study = client.get(
        "/api/audit/events", params={"study": gateway.study_uid}, headers=auditor
    ).json()
    assert by_study["total"] >= 1
    assert all(gateway.study_uid in e["object_uids"] for e in by_study["items"])
    export = client.get("/api/audit/export", params={"from": "2000-01-01"}, headers=auditor)
    assert export.status_code == 200
    lines = export.text.strip().splitlines()
    assert len(lines) == client.get("/api/audit/events", headers=auditor).json()["total"] - 1
    verified = client.get("/api/audit/verify", headers=auditor).json()
    assert verified["ok"] is True and verified["count"] == len(lines) + 1
    bad = client.get(
        "/api/audit/export", params={"from": "2030-01-01", "to": "2020-01-01"}, headers=auditor
    )
    assert bad.status_code == 422
    # An edited record is named by the API's verification as by the command line.
    with gateway.service.database.session() as session:
        first = session.get(AuditEvent, 1)
        assert first is not None
        first.actor = "mallory"
    broken = client.get("/api/audit/verify", headers=gateway.headers(Role.ADMIN)).json()
    assert (
        broken["ok"] is False and broken["broken_seq"] == 1 and broken["reason"] == "hash-mismatch"
    )


def test_password_login_sets_a_session_and_locks_out_guessing(gateway: ApiGateway) -> None:
    client = gateway.client
    assert client.get("/api/auth/me").status_code == 401
    wrong = client.post("/api/auth/login", json={"username": "radiologist-user", "password": "x"})
    assert wrong.status_code == 401 and "overread_session" not in client.cookies
    good = client.post(
        "/api/auth/login", json={"username": "radiologist-user", "password": PASSWORD}
    )
    assert good.status_code == 200 and good.json()["role"] == "radiologist"
    assert "httponly" in good.headers["set-cookie"].lower()
    me = client.get("/api/auth/me").json()
    assert me["via"] == "session" and "view_phi" in me["permissions"]
    assert client.get("/api/worklist").status_code == 200
    assert client.post("/api/auth/logout").status_code == 204
    assert client.get("/api/worklist").status_code == 401

    policy = LockoutPolicy()
    statuses = [
        client.post(
            "/api/auth/login", json={"username": "admin-user", "password": f"guess-{i}"}
        ).status_code
        for i in range(policy.user_threshold + 1)
    ]
    assert statuses[: policy.user_threshold] == [401] * policy.user_threshold
    locked = client.post("/api/auth/login", json={"username": "admin-user", "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    failures = _events(gateway, AuditAction.LOGIN_FAILURE)
    assert [f.details["reason"] for f in failures][-1] == "locked"
    assert len(_events(gateway, AuditAction.LOGIN_SUCCESS)) == 1


def test_studies_results_and_findings(gateway: ApiGateway) -> None:
    client, rad = gateway.client, gateway.headers(Role.RADIOLOGIST)
    studies = client.get("/api/studies", headers=rad).json()
    assert [s["study_instance_uid"] for s in studies["items"]] == [gateway.study_uid]
    detail = client.get(f"/api/studies/{gateway.study_uid}", headers=rad).json()
    assert detail["result_count"] == 1 and detail["worklist_state"] == "unread"
    [result] = client.get(f"/api/studies/{gateway.study_uid}/results", headers=rad).json()
    assert result["id"] == gateway.result_id and "/data/x.dcm" not in str(result)
    [merged] = client.get(f"/api/studies/{gateway.study_uid}/findings", headers=rad).json()
    assert {f["label"]: f["positive"] for f in merged["findings"]} == {
        "Pneumothorax": True,
        "Cardiomegaly": False,
    }
    assert client.get("/api/studies/1.2.3.4", headers=rad).status_code == 404
    assert client.get("/api/studies/not-a-uid", headers=rad).status_code == 422
    # A result stored without the study's header (no patient ID) cannot be reported.
    assert client.get(f"/api/studies/{gateway.study_uid}/fhir", headers=rad).status_code == 409
    with gateway.service.database.session() as session:
        assert session.scalar(select(WorklistItem.patient_id)) == PATIENT_ID


def test_cross_site_writes_are_refused_even_with_a_valid_session(gateway: ApiGateway) -> None:
    client = gateway.client
    login = client.post(
        "/api/auth/login", json={"username": "radiologist-user", "password": PASSWORD}
    )
    assert login.status_code == 200
    url = f"/api/alerts/{gateway.alert_id}/acknowledge"
    forged = client.post(
        url, json={"communicated_to": "x"}, headers={"Origin": "https://attacker.example"}
    )
    assert forged.status_code == 403 and "cross-site" in forged.json()["detail"]
    forged_login = client.post(
        "/api/auth/login",
        json={"username": "admin-user", "password": PASSWORD},
        headers={"Origin": "https://attacker.example"},
    )
    assert forged_login.status_code == 403
    with gateway.service.database.session() as session:
        alert = session.get(Alert, gateway.alert_id)
        assert alert is not None and alert.state == "open"
    # Reads are not writes, and the gateway's own pages (same origin) may write.
    assert (
        client.get("/api/alerts", headers={"Origin": "https://attacker.example"}).status_code == 200
    )
    own = client.post(
        url, json={"communicated_to": "ED registrar"}, headers={"Origin": "http://testserver"}
    )
    assert own.status_code == 200 and own.json()["acknowledged_by"] == "radiologist-user"
