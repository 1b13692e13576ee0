"""Priors: the patient's earlier studies and the comparison with one, over the API and
on the pages, on studies stored in a running gateway (their headers name the patient)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from overread.triage import get_item

from .test_ui_forms import _client, _login
from .ui_support import PATIENT_ID, PATIENT_NAME, UiGateway, seed_study, ui_gateway, write_dx


def store_study(
    gw: UiGateway,
    folder: Path,
    findings: dict[str, float],
    *,
    study_date: str,
    patient_id: str = PATIENT_ID,
    issuer: str | None = "HOSP-A",
    patient_name: str = PATIENT_NAME,
    row_patient_id: str | None = None,
) -> str:
    """Ingest one image of a new study with these identity fields; seed its findings."""
    uid = generate_uid()
    path = write_dx(folder / f"{uid}.dcm", study_uid=uid)
    ds = pydicom.dcmread(path)
    ds.StudyDate = study_date
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.save_as(path)
    assert gw.service.ingestor.ingest_file(path) is not None
    seed_study(gw, findings, uid=uid, sop_instance_uid=str(ds.SOPInstanceUID))
    with gw.session() as session:  # as the pipeline records it from the header
        get_item(session, uid).patient_id = row_patient_id or patient_id
    return uid


@pytest.fixture(scope="module")
def studies(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[UiGateway, SimpleNamespace]]:
    folder = tmp_path_factory.mktemp("priors")
    with ui_gateway(folder / "data", stable_seconds=3600) as gw:
        s = SimpleNamespace()
        s.current = store_study(
            gw,
            folder,
            {"Pneumothorax": 0.8, "Edema": 0.2, "Pleural Effusion": 0.62},
            study_date="20260301",
        )
        s.prior = store_study(
            gw,
            folder,
            {"Pneumothorax": 0.1, "Edema": 0.7, "Pleural Effusion": 0.6},
            study_date="20250101",
        )
        s.older = store_study(gw, folder, {"Edema": 0.9}, study_date="20240101")
        s.later = store_study(gw, folder, {"Edema": 0.1}, study_date="20260401")
        # Same name, another Patient ID: never a prior.
        s.namesake = store_study(
            gw, folder, {"Edema": 0.9}, study_date="20250601", patient_id="PID-00001"
        )
        # Same Patient ID from another issuer, or with none: not surely the same patient.
        s.other_issuer = store_study(
            gw, folder, {"Edema": 0.9}, study_date="20250201", issuer="HOSP-B"
        )
        s.no_issuer = store_study(gw, folder, {"Edema": 0.9}, study_date="20250301", issuer=None)
        # The worklist row names this patient but the stored header another: trust neither.
        s.mismatch = store_study(
            gw,
            folder,
            {"Edema": 0.9},
            study_date="20250401",
            patient_id="PID-55555",
            row_patient_id=PATIENT_ID,
        )
        yield gw, s


@pytest.fixture
def client(studies: tuple[UiGateway, SimpleNamespace]) -> TestClient:
    signed_in = _client(studies[0])
    _login(signed_in)
    return signed_in


def test_priors_are_the_same_patients_earlier_studies_newest_first(
    studies: tuple[UiGateway, SimpleNamespace], client: TestClient
) -> None:
    _gw, s = studies
    reply = client.get(f"/api/studies/{s.current}/priors")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["study_date"] == "2026-03-01"
    assert [p["study_instance_uid"] for p in body["priors"]] == [s.prior, s.older]
    first = body["priors"][0]
    assert first["study_date"] == "2025-01-01"
    assert first["source"] == "gateway" and first["held"] is True
    assert first["summary"]["positive"] == ["Edema", "Pleural Effusion"]
    assert first["summary"]["text"] == "positive: Edema, Pleural Effusion"
    assert first["compare_url"] == f"/studies/{s.current}/compare/{s.prior}"
    # No query peer configured: asking the PACS too changes nothing.
    assert client.get(f"/api/studies/{s.current}/priors?pacs=true").json() == body
    # The oldest study has no prior; the namesake's own list holds none of this patient's.
    assert client.get(f"/api/studies/{s.older}/priors").json()["priors"] == []
    assert client.get(f"/api/studies/{s.namesake}/priors").json()["priors"] == []


def test_comparison_lists_what_changed_per_finding(
    studies: tuple[UiGateway, SimpleNamespace], client: TestClient
) -> None:
    _gw, s = studies
    reply = client.get(f"/api/studies/{s.current}/compare/{s.prior}")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["margin"] == 0.1
    assert body["current"]["study_date"] == "2026-03-01"
    assert body["prior"]["summary"]["positive"] == ["Edema", "Pleural Effusion"]
    changes = {c["label"]: c for c in body["changes"]}
    assert changes["Pneumothorax"]["change"] == "new"
    assert changes["Pneumothorax"]["probability_delta"] == pytest.approx(0.7)
    assert changes["Edema"]["change"] == "resolved"
    assert changes["Edema"]["prior_decision"] == "positive"
    assert changes["Edema"]["current_decision"] == "negative"
    assert changes["Pleural Effusion"]["change"] == "unchanged"
    assert [c["label"] for c in body["changes"]][:2] == ["Pneumothorax", "Edema"]
    # A stated margin narrower than the move makes it one.
    narrow = client.get(f"/api/studies/{s.current}/compare/{s.prior}?margin=0.01").json()
    assert {c["label"]: c["change"] for c in narrow["changes"]}["Pleural Effusion"] == (
        "probability up"
    )
    assert client.get(f"/api/studies/{s.current}/compare/{s.prior}?margin=1").status_code == 422


@pytest.mark.parametrize("other", ["namesake", "other_issuer", "no_issuer", "mismatch"])
def test_another_patients_study_is_refused(
    studies: tuple[UiGateway, SimpleNamespace], client: TestClient, other: str
) -> None:
    _gw, s = studies
    uid = getattr(s, other)
    reply = client.get(f"/api/studies/{s.current}/compare/{uid}")
    assert reply.status_code == 409, reply.text
    assert "same patient" in reply.json()["detail"] or "patient" in reply.json()["detail"]
    assert "changes" not in reply.json()
    page = client.get(f"/studies/{s.current}/compare/{uid}")
    assert page.status_code == 409
    assert 'id="compare"' not in page.text and "Not the same patient" in page.text


def test_a_study_compared_with_itself_or_an_unknown_one_is_refused(
    studies: tuple[UiGateway, SimpleNamespace], client: TestClient
) -> None:
    _gw, s = studies
    assert client.get(f"/api/studies/{s.current}/compare/{s.current}").status_code == 409
    unknown = generate_uid()
    assert client.get(f"/api/studies/{unknown}/priors").status_code == 404
    assert client.get(f"/api/studies/{s.current}/compare/{unknown}").status_code == 404
    assert client.get(f"/api/studies/{unknown}/compare/{s.current}").status_code == 404
    assert client.get(f"/studies/{s.current}/compare/{unknown}").status_code == 404
    assert client.get("/api/studies/not-a-uid/priors").status_code == 422


def test_priors_need_view_results(studies: tuple[UiGateway, SimpleNamespace]) -> None:
    gw, s = studies
    anonymous = _client(gw)
    assert anonymous.get(f"/api/studies/{s.current}/priors").status_code == 401
    assert anonymous.get(f"/api/studies/{s.current}/compare/{s.prior}").status_code == 401
    auditor = _client(gw)
    _login(auditor, "audrey.audit")  # may see the worklist, not results
    assert auditor.get(f"/api/studies/{s.current}/priors").status_code == 403
    assert auditor.get(f"/api/studies/{s.current}/compare/{s.prior}").status_code == 403
    assert auditor.get(f"/studies/{s.current}/compare/{s.prior}").status_code == 403
    technologist = _client(gw)
    _login(technologist, "tech.tom")
    assert technologist.get(f"/api/studies/{s.current}/compare/{s.prior}").status_code == 200


def test_the_study_page_lists_priors_and_the_comparison_page_shows_both(
    studies: tuple[UiGateway, SimpleNamespace], client: TestClient
) -> None:
    _gw, s = studies
    page = client.get(f"/studies/{s.current}")
    assert page.status_code == 200
    assert 'id="priors-table"' in page.text
    for uid in (s.prior, s.older):
        assert f'data-prior="{uid}"' in page.text
    for uid in (s.later, s.namesake, s.other_issuer, s.no_issuer, s.mismatch):
        assert uid not in page.text
    assert f'href="/studies/{s.current}/compare/{s.prior}"' in page.text
    assert "positive: Edema, Pleural Effusion" in page.text
    assert 'id="priors-none"' in client.get(f"/studies/{s.older}").text

    compare = client.get(f"/studies/{s.current}/compare/{s.prior}")
    assert compare.status_code == 200
    assert compare.headers["content-security-policy"].count("blob:") >= 1
    assert 'id="compare-current"' in compare.text and 'id="compare-prior"' in compare.text
    assert f"/dicom-web/studies/{s.prior}/metadata" in compare.text
    assert 'data-finding="Pneumothorax" data-change="new"' in compare.text
    assert 'data-finding="Edema" data-change="resolved"' in compare.text
