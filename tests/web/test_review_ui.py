"""The review gate on the web UI: the study page shows a held study as pending review
under its patient header, offers Accept / Edit / Reject to readers who may verify, and
its forms release (verified) or reject exactly as the REST API does."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from overread.harness import StorescpPacs, storescu, write_chest_dx
from overread.service.db import Job, Result, ResultReview

from .ui_support import PASSWORD, UiGateway, ui_gateway, wait_until

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("storescp") is None, reason="DCMTK not installed"),
]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SEEN = re.compile(r'name="seen" value="([^"]*)"')


def _seen(client: TestClient, uid: str) -> str:
    """The results the study page shows, as its review forms send them back."""
    found = SEEN.search(client.get(f"/studies/{uid}").text)
    assert found is not None and found.group(1)
    return found.group(1)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StorescpPacs]:
    peer = StorescpPacs(tmp_path / "pacs", ae_title="PACSAE")
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def held(tmp_path: Path, pacs: StorescpPacs) -> Iterator[tuple[UiGateway, str]]:
    """A gateway whose chest route requires review, with one study read and held."""
    route = {
        "name": "chest-xray",
        "modality": ["CR", "DX"],
        "body_part": ["CHEST"],
        "models": ["cxr-default"],
        "complete_on_release": True,
        "review": True,
    }
    with ui_gateway(
        tmp_path / "data",
        routes=[route],
        destinations=[f"PACS=PACSAE@127.0.0.1:{pacs.port}"],
    ) as gw:
        image = write_chest_dx(
            tmp_path / "dx.dcm",
            size=256,
            patient_id="UI001",
            patient_name="Review^Ursula",
            birth_date="19700101",
            accession="ACC9",
        )
        storescu(gw.service.dicom_port, [image])
        uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)

        def pending() -> bool:
            with gw.session() as session:
                return session.scalar(select(ResultReview.state)) == "pending"

        wait_until(pending, what="the result held for review")
        yield gw, uid


def _login(client: TestClient, username: str) -> str:
    form = client.get("/login")
    token = CSRF.search(form.text)
    assert token is not None
    done = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": PASSWORD},
    )
    assert done.status_code == 303, done.text
    found = CSRF.search(client.get("/").text)
    assert found is not None
    return found.group(1)


def test_the_study_page_accepts_a_held_study_and_its_sr_goes_out_verified(
    held: tuple[UiGateway, str], pacs: StorescpPacs
) -> None:
    gw, uid = held
    client = TestClient(gw.app, follow_redirects=False)
    csrf = _login(client, "dr.grey")
    worklist = client.get("/").text
    assert 'data-review="pending"' in worklist and "pending review" in worklist
    page = client.get(f"/studies/{uid}").text
    # The panel sits under the patient header, before the image and the findings.
    assert page.index('id="patient-name"') < page.index('id="review"') < page.index('id="image"')
    assert 'data-state="pending"' in page
    for control in ('id="review-accept"', 'id="review-edit"', 'id="review-reject"'):
        assert control in page
    assert page.count(f'action="/studies/{uid}/review"') == 3
    assert pacs.files() == []

    done = client.post(
        f"/studies/{uid}/review",
        data={"csrf_token": csrf, "action": "accept", "seen": _seen(client, uid)},
    )
    assert done.status_code == 303 and done.headers["location"].startswith(f"/studies/{uid}?")

    def delivered() -> bool:
        with gw.session() as session:
            states = list(session.scalars(select(Job.state).order_by(Job.id)))
        return states == ["succeeded", "succeeded"]

    wait_until(delivered, what="the released export")
    [sr_file] = pacs.files()
    sr = pydicom.dcmread(sr_file)
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "dr.grey"
    page = client.get(f"/studies/{uid}").text
    assert 'data-state="accepted"' in page and 'id="review-reject"' not in page


def test_reject_from_the_page_needs_a_reason_holder_and_the_permission(
    held: tuple[UiGateway, str], pacs: StorescpPacs
) -> None:
    gw, uid = held
    tech = TestClient(gw.app, follow_redirects=False)
    tech_csrf = _login(tech, "tech.tom")
    page = tech.get(f"/studies/{uid}").text
    assert 'data-state="pending"' in page and 'id="review-accept"' not in page
    denied = tech.post(
        f"/studies/{uid}/review",
        data={"csrf_token": tech_csrf, "action": "reject", "reason": "no"},
    )
    assert denied.status_code == 403

    reader = TestClient(gw.app, follow_redirects=False)
    csrf = _login(reader, "dr.grey")
    bad = reader.post(f"/studies/{uid}/review", data={"csrf_token": csrf, "action": "approve"})
    assert bad.status_code == 400
    done = reader.post(
        f"/studies/{uid}/review",
        data={
            "csrf_token": csrf,
            "action": "reject",
            "reason": "motion artefact",
            "seen": _seen(reader, uid),
            # A finding and a decision belong to the edit form; with a reject they are
            # ignored (never split into a per-finding verdict).
            "finding": "Effusion",
            "decision": "negative",
        },
    )
    assert done.status_code == 303
    with gw.session() as session:
        review = session.scalar(select(ResultReview))
        assert review is not None
        assert (review.state, review.reviewer, review.reason) == (
            "rejected",
            "dr.grey",
            "motion artefact",
        )
        assert list(session.scalars(select(Job.kind))) == ["infer"]
    page = reader.get(f"/studies/{uid}").text
    assert 'data-state="rejected"' in page and "motion artefact" in page
    assert 'id="review-accept"' not in page
    assert pacs.files() == []


def test_a_verdict_on_results_that_changed_since_the_page_is_refused(
    held: tuple[UiGateway, str], pacs: StorescpPacs
) -> None:
    gw, uid = held
    client = TestClient(gw.app, follow_redirects=False)
    csrf = _login(client, "dr.grey")
    seen = _seen(client, uid)
    # Without the results the page showed, nothing is applied.
    bare = client.post(f"/studies/{uid}/review", data={"csrf_token": csrf, "action": "accept"})
    assert bare.status_code == 400
    # The result is read again after the page was rendered ("analyse anyway").
    with gw.session() as session:
        result = session.scalar(select(Result))
        assert result is not None
        result.created_at = result.created_at + timedelta(seconds=1)
    stale = client.post(
        f"/studies/{uid}/review", data={"csrf_token": csrf, "action": "accept", "seen": seen}
    )
    assert stale.status_code == 409
    assert "changed since they were shown" in stale.text and "reload" in stale.text
    with gw.session() as session:
        assert session.scalar(select(ResultReview.state)) == "pending"
        assert list(session.scalars(select(Job.kind))) == ["infer"]
    # Seen anew, the verdict applies.
    done = client.post(
        f"/studies/{uid}/review",
        data={"csrf_token": csrf, "action": "accept", "seen": _seen(client, uid)},
    )
    assert done.status_code == 303
    with gw.session() as session:
        assert session.scalar(select(ResultReview.state)) == "accepted"
