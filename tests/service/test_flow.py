"""The whole gateway in-process: DCMTK storescu -> Gateway -> model -> SR -> DCMTK storescp."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.gateway import Gateway
from overread.harness import storescu
from overread.service.db import Job, JobState, Result, Study

from .conftest import Storescp, api_token, bearer, free_port, needs_dcmtk, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pytest.importorskip("overread.service.outputs", reason="the result builders are not importable")

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _jobs(service: Gateway) -> list[Job]:
    with service.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def test_chest_xray_is_read_and_its_sr_reaches_the_pacs(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    image = dx_factory(size=256)
    storescu(service.dicom_port or 0, [image])
    # The default chest route completes on association release: no 60 s wait.
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [sr_file] = storescp.files()
    sr = pydicom.dcmread(sr_file)
    source = pydicom.dcmread(image, stop_before_pixels=True)
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    jobs = _jobs(service)
    assert [(j.kind, j.state, j.destination) for j in jobs] == [
        ("infer", "succeeded", ""),
        ("export", "succeeded", "PACS"),
    ]
    with service.database.session() as session:
        study = session.scalar(select(Study))
        assert study is not None and study.complete_reason == "association-released"
        [result] = session.scalars(select(Result)).all()
        assert result.model_name == "cxr-default"
        assert result.summary["instances"][0]["ok"] is True
        assert len(result.summary["instances"][0]["findings"]) == 14
        assert result.artifacts[0]["sop_instance_uid"] == sr.SOPInstanceUID
    base = f"http://127.0.0.1:{service.http_port}/api/studies"
    auth = bearer(api_token(service, "radiologist"))
    assert httpx.get(base, timeout=10).status_code == 401
    [listed] = httpx.get(base, headers=auth, timeout=10).json()["items"]
    assert listed["state"] == "routed" and listed["instance_count"] == 1
    [api_result] = httpx.get(
        f"{base}/{source.StudyInstanceUID}/results", headers=auth, timeout=10
    ).json()
    assert api_result["model_name"] == "cxr-default"
    assert len(api_result["instances"][0]["findings"]) == 14
    assert httpx.get(f"{base}/1.2.3.4/results", headers=auth, timeout=10).status_code == 404
    # The same study again: stored idempotently, routed again, but not read twice.
    storescu(service.dicom_port or 0, [image])
    time.sleep(1.0)
    assert len(_jobs(service)) == 2 and len(storescp.files()) == 1


def test_stable_time_and_explicit_trigger_complete_studies(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    routes = [
        {
            "name": "any-dx",
            "modality": ["DX"],
            "models": ["cxr-default"],
            "complete_on_release": False,
        }
    ]
    service = make_service(routes=routes, stable_seconds=5)
    study_a, study_b = generate_uid(), generate_uid()
    storescu(
        service.dicom_port or 0, [dx_factory(study_uid=study_a), dx_factory(study_uid=study_a)]
    )
    with service.database.session() as session:
        state = session.scalar(select(Study.state).where(Study.study_instance_uid == study_a))
    assert state == "receiving"  # released, but this route waits for the stable time
    wait_until(lambda: any(j.state == "succeeded" for j in _jobs(service)), timeout=60)
    with service.database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_a))
        assert study is not None and study.complete_reason == "stable" and study.instance_count == 2

    # The explicit trigger through the HTTP API, before the stable time runs out.
    service.config.stable_seconds = 3600
    service.assembler.config.stable_seconds = 3600
    storescu(service.dicom_port or 0, [dx_factory(study_uid=study_b)])
    base = f"http://127.0.0.1:{service.http_port}"
    assert httpx.post(f"{base}/api/studies/{study_b}/complete", timeout=10).status_code == 401
    reply = httpx.post(
        f"{base}/api/studies/{study_b}/complete",
        headers=bearer(api_token(service, "technologist")),
        timeout=10,
    )
    assert reply.status_code == 200 and len(reply.json()["jobs"]) == 1
    wait_until(lambda: sum(j.state == "succeeded" for j in _jobs(service)) == 2, timeout=60)
    health = httpx.get(f"{base}/health", timeout=10).json()
    assert health["status"] == "ok" and health["jobs"] == {"succeeded": 2}
    listed = httpx.get(
        f"{base}/api/jobs",
        params={"study": study_b},
        headers=bearer(api_token(service, "admin")),
        timeout=10,
    ).json()["items"]
    assert [(j["kind"], j["state"], j["model_name"]) for j in listed] == [
        ("infer", "succeeded", "cxr-default")
    ]


def test_unreachable_destination_is_retried_then_dead_lettered_then_requeued(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    port = free_port()  # nobody listens here yet
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{port}"], max_attempts=3)
    storescu(service.dicom_port or 0, [dx_factory(size=256)])

    def export() -> Job | None:
        return next((j for j in _jobs(service) if j.kind == "export"), None)

    wait_until(lambda: (e := export()) is not None and e.state == JobState.DEAD_LETTERED.value)
    dead = export()
    assert dead is not None and dead.attempts == 3 and "association failed" in (dead.error or "")
    # The PACS comes back; an operator requeues the dead letter through the API.
    pacs = Storescp(tmp_path / "late-pacs", port=port)
    try:
        url = f"http://127.0.0.1:{service.http_port}/api/jobs/{dead.id}/requeue"
        assert httpx.post(url, timeout=10).status_code == 401
        radiologist = bearer(api_token(service, "radiologist"))
        assert httpx.post(url, headers=radiologist, timeout=10).status_code == 403
        reply = httpx.post(url, headers=bearer(api_token(service, "admin")), timeout=10)
        assert reply.status_code == 200
        wait_until(lambda: (e := export()) is not None and e.state == "succeeded", timeout=60)
        assert len(pacs.files()) == 1
    finally:
        pacs.stop()
    # Every C-STORE attempt is audited, the failed ones with the peer's error.
    from overread.audit import AuditEvent

    with service.database.session() as session:
        exports = [
            e.details
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.seq)
            )
        ]
    # Each attempt is announced ("sending") before anything leaves, so an export that
    # reached the PACS just before a crash still shows in the trail.
    assert [(d["destination_kind"], d["outcome"]) for d in exports] == [
        ("dicom", "sending"),
        ("dicom", "failed"),
        ("dicom", "sending"),
        ("dicom", "failed"),
        ("dicom", "sending"),
        ("dicom", "failed"),
        ("dicom", "sending"),
        ("dicom", "stored"),
    ]
    exports = [d for d in exports if d["outcome"] != "sending"]
    assert [d["attempt"] for d in exports[:3]] == [1, 2, 3]
    assert all("association failed" in d["error"] for d in exports[:3])
    assert all(d["job_id"] == dead.id and d["objects"] == 1 for d in exports)


def test_a_study_the_model_was_not_made_for_is_not_analysed_and_stays_visible(
    make_service: Callable[..., Gateway], tmp_path: Path
) -> None:
    """A CT routed to the chest model: stored, never dead-lettered or dropped, listed on
    the worklist as not analysed with the input gate's reason."""
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))  # bundled with pydicom
    routes = [
        {"name": "ct", "modality": ["CT"], "models": ["cxr-default"], "complete_on_release": True}
    ]
    service = make_service(routes=routes)
    storescu(service.dicom_port or 0, [ct])
    wait_until(lambda: any(j.state == JobState.SUCCEEDED.value for j in _jobs(service)), timeout=60)
    [job] = _jobs(service)
    assert job.attempts == 1  # decided once: retrying would not change the image
    token = api_token(service, "radiologist")
    study = str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    reply = httpx.get(
        f"http://127.0.0.1:{service.http_port}/api/worklist/{study}",
        headers=bearer(token),
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    item = reply.json()
    assert item["analysis"] == "not analysed" and item["gate_status"] == "refuse"
    assert "modality CT is not accepted" in item["gate_note"]


def test_with_explain_the_pacs_also_gets_heatmap_overlays(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], explain=True)
    storescu(service.dicom_port or 0, [dx_factory(size=256)])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    classes = [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in storescp.files()
    ]
    assert classes.count(COMPREHENSIVE_SR) == 1
    overlays = [c for c in classes if c != COMPREHENSIVE_SR]
    assert overlays and set(overlays) <= {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert len(result.artifacts) == len(classes)


def test_a_phantom_cohort_is_read_study_by_study(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    phantom = pytest.importorskip("overread.phantom")
    cohort = tmp_path / "cohort"
    phantom.generate_cohort(cohort, n=3, seed=1, rows=256, cols=256)
    images = sorted((cohort / "images").rglob("*.dcm"))
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in images}
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    storescu(service.dicom_port or 0, [*images])
    wait_until(
        lambda: (
            len(_jobs(service)) == 2 * len(studies)
            and {j.state for j in _jobs(service)} == {"succeeded"}
        )
    )
    srs = [pydicom.dcmread(p) for p in storescp.files()]
    assert len(srs) == len(images)  # one SR per image
    assert {str(sr.StudyInstanceUID) for sr in srs} == studies
    with service.database.session() as session:
        results = session.scalars(select(Result)).all()
        assert len(results) == len(studies)
        assert all(i["ok"] for r in results for i in r.summary["instances"])


def test_every_step_is_audited_and_the_study_reaches_the_worklist(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    from overread.audit import AuditEvent, verify_chain
    from overread.triage import WorklistItem

    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    image = dx_factory(size=256)
    edited = pydicom.dcmread(image)
    edited.InstitutionalDepartmentName = "Emergency Department"
    edited.PatientAge = "080Y"
    edited.save_as(image)
    storescu(service.dicom_port or 0, [image])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    study_uid = str(edited.StudyInstanceUID)
    with service.database.session() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all())
        item = session.scalar(
            select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)
        )
        verdict = verify_chain(session)
    actions = [e.action for e in events]
    # An alert is raised too when the model calls a critical finding on this image.
    # The export twice: announced before sending, then its outcome.
    assert [a for a in actions if a != "alert"] == [
        "receive",
        "inference",
        "export",
        "export",
    ], actions
    assert [e.details["outcome"] for e in events if e.action == "export"] == ["sending", "stored"]
    assert all(study_uid in e.object_uids for e in events)
    assert verdict.ok, verdict.message
    assert verdict.count == len(events)
    assert item is not None
    assert item.department == "ED"
    assert item.patient_age == 80
    assert "department" in str(item.breakdown), item.breakdown


def test_a_destination_that_deidentifies_gets_pseudonyms_and_the_store_keeps_originals(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    salt = tmp_path / "deid.salt"
    salt.write_text("site-secret\n", encoding="utf-8")
    service = make_service(
        destinations=[
            {
                "name": "RESEARCH",
                "ae_title": "PACSAE",
                "host": "127.0.0.1",
                "port": storescp.port,
                "deidentify": ["retain-device-identity"],
            }
        ],
        deid_salt_file=salt,
    )
    image = dx_factory(size=256)
    storescu(service.dicom_port or 0, [image])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [sr_file] = storescp.files()
    sent = pydicom.dcmread(sr_file)
    source = pydicom.dcmread(image, stop_before_pixels=True)
    assert sent.PatientIdentityRemoved == "YES"
    assert str(sent.PatientID) != str(source.PatientID) and sent.PatientID.startswith("ANON")
    assert sent.StudyInstanceUID != source.StudyInstanceUID
    assert sent.SOPClassUID == COMPREHENSIVE_SR
    codes = {item.CodeValue for item in sent.DeidentificationMethodCodeSequence}
    assert {"113100", "113104", "113109"} <= codes
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        key = str(result.artifacts[0]["key"])
    kept = pydicom.dcmread(service.store.path(key))
    # The findings survive (Clean Structured Content), with every UID replaced.
    assert len(sent.ContentSequence) == len(kept.ContentSequence) > 0
    sent_bytes, kept_uids = sr_file.read_bytes(), {source.StudyInstanceUID, source.SOPInstanceUID}
    assert not any(uid.encode() in sent_bytes for uid in kept_uids)
    errors = dciodvfy_errors(sr_file)
    assert errors == [], "\n".join(errors)
    assert kept.StudyInstanceUID == source.StudyInstanceUID  # the stored SR is untouched
    assert kept.PatientID == source.PatientID


def test_a_deidentifying_destination_without_a_salt_is_refused_at_start(tmp_path: Path) -> None:
    salt = tmp_path / "deid.salt"
    salt.write_text("site-secret\n", encoding="utf-8")
    from overread.config import Settings
    from overread.errors import ConfigError
    from overread.service.config import service_config

    destination = {"name": "R", "ae_title": "R", "host": "h", "port": 104, "deidentify": ["basic"]}
    with pytest.raises(ConfigError, match="deid_salt_file"):
        service_config(Settings(data_dir=tmp_path), destinations=[destination])
    with pytest.raises(ConfigError, match="clean-pixel-data"):
        service_config(
            Settings(data_dir=tmp_path),
            destinations=[{**destination, "deidentify": ["clean-pixel-data"]}],
            deid_salt_file=salt,
        )
