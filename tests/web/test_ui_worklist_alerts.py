"""Worklist bands and AI-call labels, closed-loop alerts, paged audit and jobs tables.

Pages through the app (no browser) and the REST routes, on a gateway whose worklist
the tests fill directly (known findings, no model run).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.security import Role

from .conftest import tokens_for_every_role
from .ui_support import PASSWORD, PATIENT_FAMILY, UiGateway, seed_study, ui_gateway, write_dx

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
UNVERIFIED = "AI \u2014 not verified"

#: Every finding but the critical ones, probable: a sum that outscores a pneumothorax.
MODERATE = {
    "Edema": 0.88,
    "Consolidation": 0.88,
    "Pneumonia": 0.88,
    "Lung Lesion": 0.88,
    "Enlarged Cardiomediastinum": 0.88,
    "Lung Opacity": 0.88,
    "Cardiomegaly": 0.88,
    "Atelectasis": 0.88,
    "Pleural Other": 0.88,
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiGateway]:
    folder = tmp_path_factory.mktemp("ui-worklist")
    with ui_gateway(folder / "data", stable_seconds=3600) as gw:
        gw.moderate = seed_study(gw, MODERATE, department="ED", age=90)  # type: ignore[attr-defined]
        # A stored image of the test patient, so the alert can name them.
        dx = write_dx(folder / "stored.dcm", study_uid=generate_uid())
        assert gw.service.ingestor.ingest_file(dx) is not None
        header = pydicom.dcmread(dx, stop_before_pixels=True)
        gw.critical = seed_study(  # type: ignore[attr-defined]
            gw,
            {"Pneumothorax": 0.55, "Pleural Effusion": 0.95},
            department="outpatient",
            age=40,
            uid=str(header.StudyInstanceUID),
            sop_instance_uid=str(header.SOPInstanceUID),
        )
        yield gw


def _client(gw: UiGateway) -> TestClient:
    return TestClient(gw.app, follow_redirects=False)


def _login(client: TestClient, username: str = "dr.grey") -> str:
    token = CSRF.search(client.get("/login").text)
    assert token is not None
    done = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": PASSWORD},
    )
    assert done.status_code == 303, done.text
    found = CSRF.search(client.get("/").text)
    assert found is not None
    return found.group(1)


def _row_uids(html: str) -> list[str]:
    return re.findall(r'data-uid="([^"]+)"', html)


def _alert(gw: UiGateway) -> int:
    from overread.triage import Alert

    with gw.session() as session:
        [alert] = session.scalars(
            select(Alert).where(Alert.study_instance_uid == gw.critical)  # type: ignore[attr-defined]
        ).all()
        return alert.id


def test_the_critical_study_is_first_and_every_ai_call_is_labelled(gateway: UiGateway) -> None:
    from overread.triage import get_item

    with gateway.session() as session:
        moderate = get_item(session, gateway.moderate)  # type: ignore[attr-defined]
        critical = get_item(session, gateway.critical)  # type: ignore[attr-defined]
        assert moderate.score > 2 * critical.score
    client = _client(gateway)
    _login(client)
    page = client.get("/").text
    uids = _row_uids(page)
    assert uids.index(gateway.critical) < uids.index(gateway.moderate)  # type: ignore[attr-defined]
    rows = _row_uids(client.get("/worklist/rows").text)
    assert rows == uids
    row = page.split(f'data-uid="{gateway.critical}"')[1].split("</tr>")[0]  # type: ignore[attr-defined]
    assert 'data-priority="critical"' in page
    assert 'Pleural Effusion 0.95 <span class="decision">positive</span>' in row
    assert UNVERIFIED in row
    assert page.count(UNVERIFIED) >= 2


def test_an_indeterminate_call_never_reads_as_positive(gateway: UiGateway) -> None:
    from overread.results import FindingResult
    from overread.service.db import utcnow
    from overread.triage import StudyContext, TriageConfig, upsert_study

    uid = generate_uid()
    with gateway.session() as session:
        upsert_study(
            session,
            uid,
            [FindingResult("Edema", 0.10, True, 0.9, 0.08, decision="indeterminate")],
            StudyContext("ED", 50, utcnow()),
            TriageConfig.model_validate(gateway.service.config.triage),
            now=utcnow(),
        )
    client = _client(gateway)
    _login(client)
    row = client.get("/").text.split(f'data-uid="{uid}"')[1].split("</tr>")[0]
    assert 'decision-indeterminate">Edema 0.10 <span class="decision">indeterminate (refer)' in row
    assert ">positive<" not in row


def test_alert_names_the_patient_only_for_roles_that_may_see_it(gateway: UiGateway) -> None:
    alert_id = _alert(gateway)
    radiologist = _client(gateway)
    _login(radiologist)
    page = radiologist.get("/alerts").text
    row = page.split(f'data-alert="{alert_id}"')[1].split("</tr>")[0]
    assert PATIENT_FAMILY in row
    # One alert holds both of the study's critical findings.
    assert "Pleural Effusion" in row and "Pneumothorax" in row
    assert UNVERIFIED in row
    assert "level 0" in row
    admin = _client(gateway)
    _login(admin, "ada.admin")
    page = admin.get("/alerts").text
    row = page.split(f'data-alert="{alert_id}"')[1].split("</tr>")[0]
    assert PATIENT_FAMILY not in page and "hidden" in row


def test_acknowledging_asks_who_was_told_then_a_verdict_closes_the_alert(
    gateway: UiGateway,
) -> None:
    from overread.audit import AuditEvent
    from overread.service.db import utcnow
    from overread.triage import Alert, alert_notes, record_feedback

    alert_id = _alert(gateway)
    client = _client(gateway)
    token = _login(client)
    refused = client.post(
        f"/alerts/{alert_id}/acknowledge",
        data={"csrf_token": token, "communicated_to": "  ", "note": "x"},
    )
    assert refused.status_code == 400
    assert "who was told" in refused.text
    with gateway.session() as session:
        assert session.get(Alert, alert_id).state == "open"  # type: ignore[union-attr]
    done = client.post(
        f"/alerts/{alert_id}/acknowledge",
        data={
            "csrf_token": token,
            "communicated_to": "Dr Ward, ED registrar, phone",
            "note": "drain requested",
        },
    )
    assert done.status_code == 303
    page = client.get("/alerts").text
    row = page.split('id="acknowledged-alerts"')[1].split(f'data-alert="{alert_id}"')[1]
    row = row.split("</tr>")[0]
    assert "Dr Ward, ED registrar, phone" in row and "drain requested" in row
    with gateway.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "alert").order_by(AuditEvent.seq)
        ).all()
        acknowledged = [e for e in events if e.details.get("event") == "acknowledged"]
        assert acknowledged[-1].details["communicated_to"] == "Dr Ward, ED registrar, phone"
        assert acknowledged[-1].actor == "dr.grey"
        record_feedback(
            session,
            gateway.critical,  # type: ignore[attr-defined]
            "Pneumothorax",
            "agree",
            reader="dr.grey",
            now=utcnow(),
        )
        alert = session.get(Alert, alert_id)
        assert alert is not None and alert.state == "closed"
        assert [n.event for n in alert_notes(session, alert)] == ["acknowledged", "closed"]
    page = client.get("/alerts").text
    assert "read by dr.grey" in page
    # On the worklist the study's calls are now confirmed by a reader.
    rows = client.get("/").text
    row = rows.split(f'data-uid="{gateway.critical}"')[1].split("</tr>")[0]  # type: ignore[attr-defined]
    assert "read by dr.grey" in row and UNVERIFIED not in row


def test_the_api_acknowledges_with_who_was_told_and_shows_the_loop(gateway: UiGateway) -> None:
    from overread.triage import AlertState

    tokens = tokens_for_every_role(gateway.service)
    auth = {"Authorization": f"Bearer {tokens[Role.RADIOLOGIST]}"}
    client = _client(gateway)
    uid = seed_study(gateway, {"Pneumothorax": 0.9, "Fracture": 0.2})
    listed = client.get("/api/alerts", params={"study": uid}, headers=auth)
    assert listed.status_code == 200, listed.text
    [alert] = listed.json()["items"]
    assert alert["state"] == AlertState.OPEN.value
    assert [f["finding"] for f in alert["findings"]] == ["Pneumothorax"]
    assert alert["next_escalation_at"] is None  # no level-1 channel configured
    url = f"/api/alerts/{alert['id']}/acknowledge"
    assert client.post(url, headers=auth).status_code == 422
    assert client.post(url, json={"communicated_to": ""}, headers=auth).status_code == 422
    done = client.post(url, json={"communicated_to": "ICU charge nurse", "note": "n"}, headers=auth)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["state"], body["communicated_to"], body["note"]) == (
        "acknowledged",
        "ICU charge nurse",
        "n",
    )
    assert body["acknowledged_by"] == "radiologist-user"
    # A reader sets a band by hand; the worklist API shows it.
    put = client.put(f"/api/worklist/{uid}/priority", json={"priority": "urgent"}, headers=auth)
    assert put.status_code == 200, put.text
    assert (put.json()["priority"], put.json()["priority_source"]) == ("urgent", "reader")
    bad = client.put(f"/api/worklist/{uid}/priority", json={"priority": "soon"}, headers=auth)
    assert bad.status_code == 422


def test_audit_and_jobs_tables_page(gateway: UiGateway) -> None:
    client = _client(gateway)
    _login(client, "ada.admin")
    # Alert events (viewing the page adds view events, not alert ones).
    seed_study(gateway, {"Pneumothorax": 0.9})
    seed_study(gateway, {"Pneumothorax": 0.9})
    first = client.get("/audit", params={"action": "alert", "limit": 2}).text
    seqs = re.findall(r'<tr data-seq="(\d+)"', first)
    assert len(seqs) == 2
    assert 'class="next" href="?action=alert&amp;offset=2&amp;limit=2"' in first
    assert 'class="previous"' not in first
    second = client.get("/audit", params={"action": "alert", "limit": 2, "offset": 2}).text
    more = re.findall(r'<tr data-seq="(\d+)"', second)
    assert len(more) == 2 and int(more[0]) < int(seqs[-1])
    assert 'class="previous" href="?action=alert&amp;offset=0&amp;limit=2"' in second
    # Nonsense paging is clamped, not an error.
    assert client.get("/audit", params={"limit": "x", "offset": "-3"}).status_code == 200
    jobs = client.get("/admin/jobs", params={"limit": 1})
    assert jobs.status_code == 200
    assert 'id="jobs-pager"' in jobs.text
    assert len(re.findall(r'<tr data-job="', jobs.text.split('id="jobs"')[1])) <= 1


def test_a_huge_limit_is_capped(gateway: UiGateway, tmp_path: Path) -> None:
    from overread.web.ui.pages.audit import AUDIT_ROWS_MAX

    client = _client(gateway)
    _login(client, "ada.admin")
    page = client.get("/audit", params={"limit": 10**9}).text
    assert len(re.findall(r'<tr data-seq="', page)) <= AUDIT_ROWS_MAX
