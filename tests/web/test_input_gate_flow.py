"""A study the input gate refuses, through a started gateway: it is stored, listed on the
worklist as "not analysed: REASON" (REST and UI), its SR says so, and a radiologist's
"analyse anyway" is audited and yields a result marked outside the intended use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.gateway import Gateway
from overread.harness import StorescpPacs
from overread.security import Role
from overread.service.db import Result

from .conftest import stow_body, tokens_for_every_role, wait_for, write_chest_dx

pytestmark = [pytest.mark.service, pytest.mark.slow]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


def _sr_text(service: Gateway, study: str) -> str:
    with service.database.session() as session:
        result = session.scalars(select(Result).where(Result.study_instance_uid == study)).one()
        [sr_key] = [a["key"] for a in result.artifacts if a["modality"] == "SR"]
    dataset = pydicom.dcmread(service.store.path(sr_key))
    hd.sr.ComprehensiveSR.from_dataset(dataset)  # a valid TID 1500 document
    texts = [item.TextValue for item in _walk(dataset) if "TextValue" in item]
    return " ".join(texts)


def _walk(dataset: Any) -> list[Any]:
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(_walk(item))
    return items


def test_a_refused_study_is_listed_reported_and_can_be_analysed_anyway(
    make_gateway_service: Callable[..., Gateway], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pacs = StorescpPacs(tmp_path / "pacs", ae_title="PACSAE")
    pacs_port = pacs.start()
    request.addfinalizer(pacs.stop)
    service = make_gateway_service(
        artifacts=True, destinations=[f"PACS=PACSAE@127.0.0.1:{pacs_port}"]
    )
    tokens = tokens_for_every_role(service)

    def auth(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    base = f"http://127.0.0.1:{service.http_port}"
    study = generate_uid()
    path = write_chest_dx(tmp_path / "lateral.dcm", study_uid=study)
    dataset = pydicom.dcmread(path)
    dataset.ViewPosition = "LL"  # a lateral view: the package accepts PA and AP only
    dataset.save_as(path)
    content_type, body = stow_body(path.read_bytes())
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
    assert item["study_instance_uid"] == study
    assert item["analysis"] == "not analysed" and item["gate_status"] == "refuse"
    assert item["findings"] == []
    assert item["gate_note"].startswith("not analysed: view position LL is not accepted")
    assert "Not analysed: view position LL" in _sr_text(service, study)
    # The PACS gets the SR that says why.
    wait_for(lambda: len(pacs.files()) == 1)

    page = httpx.get(f"{base}/", headers=auth(Role.RADIOLOGIST), timeout=10)
    assert "not analysed: view position LL" in page.text
    study_page = httpx.get(f"{base}/studies/{study}", headers=auth(Role.RADIOLOGIST), timeout=10)
    assert 'id="analyse-anyway"' in study_page.text

    technologist = httpx.post(
        f"{base}/api/studies/{study}/analyse-anyway", headers=auth(Role.TECHNOLOGIST), timeout=10
    )
    assert technologist.status_code == 403
    override = httpx.post(
        f"{base}/api/studies/{study}/analyse-anyway", headers=auth(Role.RADIOLOGIST), timeout=10
    )
    assert override.status_code == 200 and override.json()["jobs"]

    def analysed() -> dict[str, Any] | None:
        [row] = worklist()
        return row if row["analysis"] == "outside intended use" else None

    row = wait_for(analysed)
    assert len(row["findings"]) == 14 and row["gate_status"] == "refuse"
    assert row["gate_note"].startswith("outside the model's intended use")
    text = _sr_text(service, study)
    assert "Outside the model's intended use" in text and "Not analysed" not in text
    # ... and then the result the reader asked for, marked as outside the intended use.
    wait_for(lambda: len(pacs.files()) == 2)
    sent = [pydicom.dcmread(f) for f in pacs.files()]
    texts = [" ".join(i.TextValue for i in _walk(d) if "TextValue" in i) for d in sent]
    assert sum("Outside the model's intended use" in t for t in texts) == 1
    bundle = httpx.get(
        f"{base}/api/studies/{study}/fhir", headers=auth(Role.RADIOLOGIST), timeout=30
    ).json()
    [report] = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert "Outside the model's intended use" in report["conclusion"]
    again = httpx.post(
        f"{base}/api/studies/{study}/analyse-anyway", headers=auth(Role.RADIOLOGIST), timeout=10
    )
    assert again.status_code == 409

    audit = httpx.get(
        f"{base}/api/audit/events",
        params={"study": study, "action": "gate-override"},
        headers=auth(Role.AUDITOR),
        timeout=10,
    ).json()
    [event] = audit["items"]
    assert event["actor"] == "radiologist-user" and event["details"]["jobs"]
    inference = httpx.get(
        f"{base}/api/audit/events",
        params={"study": study, "action": "inference"},
        headers=auth(Role.AUDITOR),
        timeout=10,
    ).json()["items"]
    assert sorted(bool(e["details"].get("override_gate")) for e in inference) == [False, True]
