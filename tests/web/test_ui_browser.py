"""The web UI in a real Chromium (Playwright), against a running gateway with a real model.

One gateway per module (DICOM listener, a worker running the bundled model with
heatmaps, SQLite) serves the UI on a free port; studies are either put on the
worklist directly (known scores) or sent with DCMTK's storescu and read by the model.
Set ``OVERREAD_UI_SCREENSHOTS=DIR`` to save the worklist and study pages as PNGs.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.harness import storescu

from .ui_support import (
    CHROMIUM_ARGS,
    PASSWORD,
    PATIENT_FAMILY,
    PATIENT_ID,
    UiGateway,
    chromium_path,
    seed_study,
    ui_gateway,
    wait_until,
    worklist_has,
    write_dx,
)

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed"),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK storescu not installed"),
]

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

SCREENSHOTS = os.environ.get("OVERREAD_UI_SCREENSHOTS")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiGateway]:
    """The gateway, with three studies of known priority on the worklist."""
    with ui_gateway(tmp_path_factory.mktemp("ui") / "data", explain=True) as gw:
        gw.seeded = {  # type: ignore[attr-defined]
            "high": seed_study(gw, {"Pneumothorax": 0.95}, department="ED", age=80),
            "mid": seed_study(gw, {"Pleural Effusion": 0.85}, department="ICU"),
            "low": seed_study(gw, {"Cardiomegaly": 0.7}, department="outpatient"),
        }
        yield gw


class _RealStudy:
    """One study sent over DICOM and read by the model, shared by the tests that need it."""

    def __init__(self) -> None:
        self.uid = ""
        self._lock = threading.Lock()

    def send(self, gw: UiGateway, folder: Path) -> str:
        with self._lock:
            if not self.uid:
                uid = generate_uid()
                storescu(gw.service.dicom_port, [write_dx(folder / "real.dcm", study_uid=uid)])
                self.uid = uid
        wait_until(lambda: worklist_has(gw, self.uid), 120, "the sent study on the worklist")
        return self.uid


REAL = _RealStudy()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium (the system's), headless, with a fresh profile."""
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (no cookies)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    context.close()


def _login(page: Any, gw: UiGateway, username: str, password: str = PASSWORD) -> None:
    page.goto(gw.base_url + "/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state()


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_login_fails_then_succeeds(gateway: UiGateway, page: Any) -> None:
    page.goto(gateway.base_url + "/")
    assert page.url.startswith(gateway.base_url + "/login")
    _login(page, gateway, "dr.grey", "not the password")
    assert page.locator("#login-error").inner_text() == "Invalid user name or password."
    _login(page, gateway, "nobody.here", "not the password")
    assert page.locator("#login-error").inner_text() == "Invalid user name or password."
    _login(page, gateway, "dr.grey")
    assert page.url == gateway.base_url + "/"
    assert page.locator("[data-testid=user]").inner_text() == "dr.grey"
    assert page.locator("#worklist").is_visible()


def test_worklist_is_in_priority_order_and_new_studies_appear_live(
    gateway: UiGateway, page: Any, tmp_path: Path
) -> None:
    seeded = gateway.seeded  # type: ignore[attr-defined]
    _login(page, gateway, "dr.grey")
    uids = page.locator("#worklist-rows tr[data-uid]").evaluate_all(
        "rows => rows.map(r => r.dataset.uid)"
    )
    bands = {"critical": 2, "urgent": 1, "routine": 0}
    keys = page.locator("#worklist-rows tr[data-uid]").evaluate_all(
        "rows => rows.map(r => [r.dataset.priority, r.querySelector('td.score').textContent])"
    )
    order = [(-bands[band], -float(score)) for band, score in keys]
    assert order == sorted(order)
    order = [u for u in uids if u in seeded.values()]
    assert order == [seeded["high"], seeded["mid"], seeded["low"]]
    assert page.locator(f'tr[data-uid="{seeded["high"]}"] .badge.critical').is_visible()
    assert not page.locator(f'tr[data-uid="{seeded["low"]}"] .badge.critical').count()

    # A study sent over DICOM while the page is open is announced without a reload,
    # and appears when the reader chooses to re-sort.
    page.evaluate("window.__sameDocument = true")
    uid = REAL.send(gateway, tmp_path)
    page.wait_for_selector("#worklist-update:not([hidden])", timeout=30_000)
    assert "new stud" in page.locator("#worklist-update-text").inner_text()
    page.click("#worklist-resort")
    page.wait_for_selector(f'#worklist-rows tr[data-uid="{uid}"]', timeout=30_000)
    assert page.evaluate("window.__sameDocument === true")
    assert PATIENT_FAMILY in page.locator(f'tr[data-uid="{uid}"]').inner_text()
    _shot(page, "worklist.png")
    # Keyboard: j selects the top row, Enter opens it.
    top = page.locator("#worklist-rows tr[data-uid]").first.get_attribute("data-uid")
    page.keyboard.press("j")
    assert page.locator("#worklist-rows tr.selected").get_attribute("data-uid") == top
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/studies/{top}")


def test_study_page_shows_findings_heatmap_and_records_disagreement(
    gateway: UiGateway, page: Any, tmp_path: Path
) -> None:
    from overread.audit import AuditEvent
    from overread.triage import Feedback

    uid = REAL.send(gateway, tmp_path)
    _login(page, gateway, "dr.grey")
    page.goto(f"{gateway.base_url}/studies/{uid}")
    assert page.locator("#findings tbody tr[data-finding]").count() == 14
    assert PATIENT_FAMILY in page.locator("#patient-name").inner_text()
    assert page.locator("#breakdown tbody tr").count() >= 1
    page.wait_for_function(
        "() => { const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0; }"
    )
    src = page.locator("#heatmap").get_attribute("src")
    image = page.request.get(gateway.base_url + src)
    assert image.status == 200 and image.headers["content-type"] == "image/png"
    # The worker ran with explain: the overlays it stored are what the page shows ...
    overlays = gateway.app.state.ui.images.stored_overlays(uid)
    assert overlays, "the worker stored no heatmap overlay"
    assert page.locator("#shown-finding").inner_text() in overlays
    assert image.headers["x-overread-image-source"] == "stored-overlay"
    # ... and a finding without one is explained on demand by the same model.
    other = next(
        f
        for f in page.locator("#findings tbody tr[data-finding]").evaluate_all(
            "rows => rows.map(r => r.dataset.finding)"
        )
        if f not in overlays
    )
    computed = page.request.get(f"{gateway.base_url}/studies/{uid}/image.png?finding={other}")
    assert computed.status == 200 and computed.headers["x-overread-image-source"] == "computed"
    assert computed.body()[:8] == b"\x89PNG\r\n\x1a\n"
    _shot(page, "study.png")

    finding = page.locator("#findings tbody tr[data-finding]").first.get_attribute("data-finding")
    row = page.locator(f'#findings tr[data-finding="{finding}"]')
    row.locator('button[value="disagree"]').click()
    page.wait_for_selector("#saved")
    assert (
        "disagree" in page.locator(f'#findings tr[data-finding="{finding}"] .verdict').inner_text()
    )
    with gateway.session() as session:
        rows = session.scalars(
            select(Feedback).where(Feedback.study_instance_uid == uid, Feedback.finding == finding)
        ).all()
        assert [(r.reader, r.verdict) for r in rows] == [("dr.grey", "disagree")]
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "feedback", AuditEvent.actor == "dr.grey")
        ).all()
        assert any(uid in e.object_uids and e.details["finding"] == finding for e in events)
        views = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "view", AuditEvent.actor == "dr.grey")
        ).all()
        assert any(uid in e.object_uids and e.details.get("page") == "study" for e in views)


def test_acknowledge_an_alert(gateway: UiGateway, page: Any) -> None:
    from overread.triage import Alert

    high = gateway.seeded["high"]  # type: ignore[attr-defined]
    with gateway.session() as session:
        alert = session.scalars(select(Alert).where(Alert.study_instance_uid == high)).one()
        alert_id = alert.id
    _login(page, gateway, "dr.grey")
    page.goto(gateway.base_url + "/alerts")
    row = page.locator(f'#open-alerts tr[data-alert="{alert_id}"]')
    assert "Pneumothorax" in row.inner_text()
    row.locator('input[name="communicated_to"]').fill("Dr Ward, ED, by phone")
    row.locator('input[name="note"]').fill("drain requested")
    _shot(page, "alerts.png")
    row.locator("button.ack").click()
    page.wait_for_load_state()
    assert not page.locator(f'#open-alerts tr[data-alert="{alert_id}"]').count()
    done = page.locator(f'#acknowledged-alerts tr[data-alert="{alert_id}"] .ack-by')
    assert done.inner_text() == "dr.grey"
    with gateway.session() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        assert (alert.state, alert.acknowledged_by) == ("acknowledged", "dr.grey")
    told = page.locator(f'#acknowledged-alerts tr[data-alert="{alert_id}"] .told')
    assert told.inner_text() == "Dr Ward, ED, by phone"


def test_auditor_sees_no_phi_no_admin_pages_but_the_audit_trail(
    gateway: UiGateway, page: Any, tmp_path: Path
) -> None:
    uid = REAL.send(gateway, tmp_path)
    _login(page, gateway, "audrey.audit")
    html = page.content()
    assert uid in html  # the study is listed ...
    assert PATIENT_FAMILY not in html and PATIENT_ID not in html  # ... without its patient
    assert not page.locator('#worklist a[href^="/studies/"]').count()  # no study page to open
    rows = page.request.get(gateway.base_url + "/worklist/rows?state=all")
    assert rows.status == 200 and uid in rows.text()
    assert PATIENT_FAMILY not in rows.text() and PATIENT_ID not in rows.text()
    for path in ("/admin/jobs", f"/studies/{uid}"):
        response = page.goto(gateway.base_url + path)
        assert response.status == 403, path
        assert page.locator("h1").inner_text() == "Not allowed"
        assert PATIENT_FAMILY not in page.content()
    response = page.goto(gateway.base_url + "/audit")
    assert response.status == 200
    assert page.locator("#verify").inner_text().startswith("Chain verified")
    assert page.locator('#events tr[data-action="access-denied"]').count() >= 2


def test_admin_requeues_a_dead_letter(gateway: UiGateway, page: Any) -> None:
    from overread.audit import AuditEvent
    from overread.service.db import Job

    with gateway.session() as session:
        job = Job(
            study_instance_uid=generate_uid(),
            model_name="m",
            model_version="1",
            kind="export",
            destination="NOWHERE",
            state="dead_lettered",
            attempts=5,
            error="ConnectionError: refused",
            payload={},
        )
        session.add(job)
        session.flush()
        job_id = job.id
    _login(page, gateway, "ada.admin")
    page.goto(gateway.base_url + "/admin/jobs")
    page.locator(f'#dead-letters tr[data-job="{job_id}"] button.requeue').click()
    page.wait_for_load_state()
    assert f"Job {job_id} requeued" in page.locator(".notice").inner_text()
    with gateway.session() as session:
        events = session.scalars(
            select(AuditEvent).where(
                AuditEvent.actor == "ada.admin", AuditEvent.action == "config-change"
            )
        ).all()
        assert any(e.details.get("job_id") == job_id for e in events)


def test_logout_invalidates_the_cookie(gateway: UiGateway, page: Any) -> None:
    _login(page, gateway, "tech.tom")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "overread_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    copied = {"overread_session": cookie["value"]}
    with httpx.Client(base_url=gateway.base_url, follow_redirects=False, cookies=copied) as client:
        before = client.get("/")
        assert before.status_code == 200
        page.click("#logout")
        page.wait_for_load_state()
        assert page.url.startswith(gateway.base_url + "/login")
        after = client.get("/")
        assert after.status_code == 303 and after.headers["location"].startswith("/login")
    page.goto(gateway.base_url + "/")
    assert page.url.startswith(gateway.base_url + "/login")


def test_refresh_never_moves_the_row_under_the_pointer(gateway: UiGateway, page: Any) -> None:
    """A critical study arriving while the reader points at a row: the row stays put,
    a bar announces it, and re-sorting puts the critical study first."""
    page.set_viewport_size({"width": 1600, "height": 1000})
    _login(page, gateway, "dr.grey")
    low = gateway.seeded["low"]  # type: ignore[attr-defined]
    target = page.locator(f'#worklist-rows tr[data-uid="{low}"]')
    box = target.bounding_box()
    assert box is not None
    x, y = box["x"] + 40, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    under = "([x, y]) => document.elementFromPoint(x, y).closest('tr').dataset.uid"
    assert page.evaluate(under, [x, y]) == low
    # Keyboard selection on another study: it must follow that study, not the row index.
    mid = gateway.seeded["mid"]  # type: ignore[attr-defined]
    for _ in range(50):
        page.keyboard.press("j")
        if page.locator("#worklist-rows tr.selected").get_attribute("data-uid") == mid:
            break
    assert page.locator("#worklist-rows tr.selected").get_attribute("data-uid") == mid
    before = page.locator("#worklist-rows tr[data-uid]").evaluate_all(
        "rows => rows.map(r => r.dataset.uid)"
    )
    critical = seed_study(
        gateway,
        {
            "Pneumothorax": 0.99,
            "Pleural Effusion": 0.99,
            "Edema": 0.95,
            "Consolidation": 0.95,
            "Pneumonia": 0.95,
        },
        department="ED",
        age=92,
    )
    page.wait_for_selector("#worklist-update:not([hidden])", timeout=30_000)
    text = page.locator("#worklist-update-text").inner_text()
    assert "1 new study (1 critical)" in text
    _shot(page, "worklist-new-studies-bar.png")
    # Nothing moved: the same rows in the same order, the same one under the pointer.
    after = page.locator("#worklist-rows tr[data-uid]").evaluate_all(
        "rows => rows.map(r => r.dataset.uid)"
    )
    assert after == before and critical not in after
    assert page.evaluate(under, [x, y]) == low
    page.keyboard.press("r")
    first = page.locator("#worklist-rows tr[data-uid]").first
    assert first.get_attribute("data-uid") == critical
    assert first.get_attribute("data-priority") == "critical"
    assert page.locator("#worklist-update").is_hidden()
    # The selection followed its study to its new row.
    selected = page.locator("#worklist-rows tr.selected")
    assert selected.count() == 1 and selected.get_attribute("data-uid") == mid


def test_monitoring_page_shows_its_charts(gateway: UiGateway, page: Any) -> None:
    import datetime as dt

    from tests.service.test_monitoring_service import _seed

    service = gateway.service
    today = dt.datetime.now(dt.UTC).date()
    _seed(service, today)
    # No validated AUC is recorded for the synthetic model: give the run one.
    service.config.monitoring.baseline_auc["Pneumothorax"] = 0.92
    service.run_monitoring(day=today)
    _login(page, gateway, "dr.grey")
    page.click('nav a[href="/monitoring"]')
    page.wait_for_load_state("networkidle")
    for chart in ("activity", "drift", "auc", "latency"):
        width = page.eval_on_selector(f"#chart-{chart}", "img => img.naturalWidth")
        assert width > 100, f"the {chart} chart did not load"
    assert "site NGH" in page.locator("#monitoring-alerts").inner_text()
    assert "alert" in page.locator("#performance-table").inner_text()
    _shot(page, "monitoring.png")
