"""A study through a started gateway, driven only over HTTP: STOW-RS with an ingest token,
the model reads it, and the worklist, findings and FHIR report are served by role."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from overread.gateway import Gateway
from overread.security import Role

from .conftest import (
    PATIENT_ID,
    PATIENT_NAME,
    stow_body,
    tokens_for_every_role,
    wait_for,
    write_chest_dx,
)

pytestmark = pytest.mark.service

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


def test_stowed_study_reaches_worklist_and_fhir_report(
    make_gateway_service: Callable[..., Gateway], tmp_path: Path
) -> None:
    service = make_gateway_service()
    tokens = tokens_for_every_role(service)

    def auth(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    base = f"http://127.0.0.1:{service.http_port}"
    study = generate_uid()
    content_type, body = stow_body(
        write_chest_dx(tmp_path / "cxr.dcm", study_uid=study).read_bytes()
    )
    refused = httpx.post(
        f"{base}/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, **auth(Role.RADIOLOGIST)},
        timeout=30,
    )
    assert refused.status_code == 403
    stored = httpx.post(
        f"{base}/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, **auth(Role.TECHNOLOGIST)},
        timeout=30,
    )
    assert stored.status_code == 200

    def worklist() -> list[dict[str, Any]]:
        reply = httpx.get(f"{base}/api/worklist", headers=auth(Role.RADIOLOGIST), timeout=10)
        items: list[dict[str, Any]] = reply.json()["items"]
        return items

    [item] = wait_for(worklist)
    # (The worker's triage does not copy the Patient ID onto the worklist row yet.)
    assert item["study_instance_uid"] == study and "patient_id" in item
    assert item["department"] == "ED" and len(item["findings"]) == 14
    assert any(t["name"] == "department" and t["contribution"] == 30 for t in item["breakdown"])

    bundle = httpx.get(
        f"{base}/api/studies/{study}/fhir", headers=auth(Role.RADIOLOGIST), timeout=30
    ).json()
    resources = [e["resource"] for e in bundle["entry"]]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    [report] = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert bundle["resourceType"] == "Bundle" and len(observations) == 14
    assert {o["code"]["text"] for o in observations} == {f["label"] for f in item["findings"]}
    assert len(report["result"]) == 14
    assert report["subject"]["identifier"]["value"] == PATIENT_ID
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)

    anonymous = httpx.get(f"{base}/api/studies/{study}/fhir", timeout=30)
    assert anonymous.status_code == 401
    deidentified = httpx.get(
        f"{base}/api/studies/{study}/fhir", headers=auth(Role.ADMIN), timeout=30
    )
    assert deidentified.status_code == 200
    assert PATIENT_ID not in deidentified.text and "ACC-PHI-7" not in deidentified.text
    assert PATIENT_NAME.split("^")[0] not in deidentified.text
    as_admin = httpx.get(f"{base}/api/worklist", headers=auth(Role.ADMIN), timeout=10).json()
    assert "patient_id" not in as_admin["items"][0]

    audit = httpx.get(
        f"{base}/api/audit/events",
        params={"study": study, "action": "view"},
        headers=auth(Role.AUDITOR),
        timeout=10,
    ).json()
    fhir_views = [e for e in audit["items"] if e["details"].get("view") == "fhir"]
    assert [(e["actor"], e["details"]["identified"]) for e in fhir_views] == [
        ("radiologist-user", True),
        ("admin-user", False),
    ]
