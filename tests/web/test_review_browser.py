"""The review gate in a real Chromium (Playwright): a route with review holds a study's
SR until a reader presses Accept on the study page, and the SR that reaches the PACS
(DCMTK storescp) is VERIFIED with the reader's name; Reject sends nothing and is
audited. Set ``OVERREAD_UI_SCREENSHOTS=DIR`` to save the review panel as a PNG.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.harness import StorescpPacs, storescu
from overread.service.db import Job, ResultReview

from .ui_support import (
    CHROMIUM_ARGS,
    PASSWORD,
    UiGateway,
    chromium_path,
    ui_gateway,
    wait_until,
    write_dx,
)

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed"),
    pytest.mark.skipif(shutil.which("storescp") is None, reason="DCMTK storescp not installed"),
]

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

SCREENSHOTS = os.environ.get("OVERREAD_UI_SCREENSHOTS")


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
        verifying_organization="General Hospital",
    ) as gw:
        uid = generate_uid()
        storescu(gw.service.dicom_port, [write_dx(tmp_path / "dx.dcm", study_uid=uid)])

        def pending() -> bool:
            with gw.session() as session:
                return session.scalar(select(ResultReview.state)) == "pending"

        wait_until(pending, 120, "the result held for review")
        yield gw, uid


@pytest.fixture
def page() -> Iterator[Any]:
    """A page of the system's Chromium, headless, in a fresh profile."""
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(30_000)
        yield context.new_page()
        context.close()
        chromium.close()


def _login(page: Any, gw: UiGateway, username: str) -> None:
    page.goto(gw.base_url + "/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()


def _jobs(gw: UiGateway) -> list[str]:
    with gw.session() as session:
        return list(session.scalars(select(Job.kind).order_by(Job.id)))


def test_accept_in_the_browser_releases_a_verified_sr_to_the_pacs(
    held: tuple[UiGateway, str], pacs: StorescpPacs, page: Any
) -> None:
    gw, uid = held
    _login(page, gw, "dr.grey")
    page.goto(f"{gw.base_url}/studies/{uid}")
    assert page.get_attribute("#review-state", "data-state") == "pending"
    assert page.locator("#patient-name").is_visible()
    assert page.locator("#review-accept").is_visible()
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.locator("#review").screenshot(path=str(Path(SCREENSHOTS) / "review.png"))
    assert pacs.files() == [] and _jobs(gw) == ["infer"]

    page.click("#review-accept")
    page.wait_for_load_state()
    assert page.get_attribute("#review-state", "data-state") == "accepted"
    assert page.locator("#patient-name").is_visible()  # the header stays in view
    wait_until(lambda: len(pacs.files()) == 1, 60, "the verified SR at the PACS")
    sr = pydicom.dcmread(pacs.files()[0])
    assert sr.VerificationFlag == "VERIFIED"
    [observer] = sr.VerifyingObserverSequence
    assert observer.VerifyingObserverName.family_name == "dr.grey"
    assert observer.VerifyingOrganization == "General Hospital"


def test_reject_in_the_browser_sends_nothing_and_is_audited(
    held: tuple[UiGateway, str], pacs: StorescpPacs, page: Any
) -> None:
    gw, uid = held
    _login(page, gw, "dr.grey")
    page.goto(f"{gw.base_url}/studies/{uid}")
    page.fill("#review-reason", "image of another patient")
    page.click("#review-reject")
    page.wait_for_load_state()
    assert page.get_attribute("#review-state", "data-state") == "rejected"
    assert page.locator("#review-accept").count() == 0
    time.sleep(1.0)
    assert pacs.files() == [] and _jobs(gw) == ["infer"]
    with gw.session() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "review-reject")
        ).all()
    assert event.actor == "dr.grey" and event.details["reason"] == "image of another patient"
