"""Priors held at a PACS on the study page: the query peer (a real Orthanc) is asked
by C-FIND once the page has loaded, its studies of the patient are listed "at PACS",
and a technologist can pull one in by C-MOVE; a silent PACS never holds the page up."""

from __future__ import annotations

import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select
from tests.service.conftest import free_port, needs_dcmtk
from tests.service.test_orthanc import Orthanc

from overread.audit import AuditAction, AuditEvent
from overread.harness import storescu
from overread.service.config import QueryPeer
from overread.service.db import Instance

from .ui_support import PASSWORD, UiGateway, ui_gateway, wait_until, worklist_has, write_dx

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class SilentPacs:
    """A TCP listener that accepts and never answers (a PACS that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def _dx(folder: Path, name: str, uid: str, study_date: str) -> Path:
    path = write_dx(folder / f"{name}.dcm", study_uid=uid)
    ds = pydicom.dcmread(path)
    ds.StudyDate = study_date
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed")
    folder = tmp_path_factory.mktemp("pacs-priors")
    pacs_port = free_port()
    silent = SilentPacs()
    peers = [
        QueryPeer(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=pacs_port),
        QueryPeer(name="hung", ae_title="HUNG", host="127.0.0.1", port=silent.port),
    ]
    with ui_gateway(folder / "data", query_peers=peers) as gw:
        pacs = Orthanc(folder, gw.service.dicom_port or 0, pacs_port)
        try:
            s = SimpleNamespace(gw=gw, pacs=pacs, silent=silent)
            s.current, s.prior, s.older = generate_uid(), generate_uid(), generate_uid()
            for uid, day in ((s.prior, "20250301"), (s.older, "20230715")):
                path = _dx(folder, uid, uid, day)
                answer = httpx.post(f"{pacs.url}/instances", content=path.read_bytes(), timeout=30)
                assert answer.status_code == 200, answer.text
            storescu(gw.service.dicom_port, [_dx(folder, "current", s.current, "20260101")])
            wait_until(lambda: worklist_has(gw, s.current), 180, "the current study")
            yield s
        finally:
            pacs.stop()
            silent.close()


def _client(gw: UiGateway, username: str) -> tuple[TestClient, str]:
    client = TestClient(gw.app, follow_redirects=False)
    token = CSRF.search(client.get("/login").text)
    assert token is not None
    done = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": PASSWORD},
    )
    assert done.status_code == 303, done.text
    found = CSRF.search(client.get("/").text)
    assert found is not None
    return client, found.group(1)


def _pacs_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-prior="([^"]+)" data-source="pacs">', html)


def test_the_study_page_lists_pacs_priors_after_loading_without_asking_the_pacs(
    site: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.web.ui.pages import compare

    client, _ = _client(site.gw, "dr.grey")
    before = len(site.silent.accepted)
    page = client.get(f"/studies/{site.current}")
    assert page.status_code == 200
    url = f"/studies/{site.current}/priors/pacs"
    assert f'id="priors-pacs" data-url="{url}"' in page.text
    # The page itself asks no PACS: the hung one was not even connected to.
    assert len(site.silent.accepted) == before
    monkeypatch.setattr(compare, "PACS_PRIORS_TIMEOUT", 2.0)
    fragment = client.get(url)
    assert fragment.status_code == 200
    assert _pacs_rows(fragment.text) == [site.prior, site.older]  # newest first
    assert fragment.text.count("at PACS") == 2
    # The hung PACS is named as not answering; the other's priors are listed anyway.
    assert 'id="priors-pacs-failed"' in fragment.text and "hung" in fragment.text
    # A radiologist may not pull studies in: no retrieve action is offered.
    assert "/retrieve" not in fragment.text and "ask a technologist" in fragment.text
    with site.gw.session() as session:
        asked = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.QUERY.value)
        ).all()
    assert any(e.details.get("view") == "pacs-priors" for e in asked)


def test_a_technologist_retrieves_a_pacs_prior_into_the_gateway(
    site: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.web.ui.pages import compare

    monkeypatch.setattr(compare, "PACS_PRIORS_TIMEOUT", 2.0)
    client, token = _client(site.gw, "tech.tom")
    fragment = client.get(f"/studies/{site.current}/priors/pacs").text
    action = f"/studies/{site.current}/priors/{site.prior}/retrieve"
    assert f'action="{action}"' in fragment
    # Without the form's token nothing is retrieved.
    assert client.post(action, data={}).status_code in (400, 403)
    # A study of the PACS that is not this patient's prior is refused.
    other = client.post(
        f"/studies/{site.current}/priors/{generate_uid()}/retrieve", data={"csrf_token": token}
    )
    assert other.status_code == 502 and "no query peer holds this prior" in other.text
    done = client.post(action, data={"csrf_token": token})
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(f"/studies/{site.current}?")
    assert "retrieved+from+pacs" in done.headers["location"]
    with site.gw.session() as session:
        stored = session.scalars(
            select(Instance.study_instance_uid).where(Instance.study_instance_uid == site.prior)
        ).all()
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.QUERY.value)
        ).all()
    assert stored == [site.prior]
    assert any(
        e.actor == "tech.tom" and e.details.get("retrieve") == "c-move" and "outcome" in e.details
        for e in events
    )
    # Once the gateway holds (and has read) it, the prior is no longer listed at the PACS.
    wait_until(lambda: worklist_has(site.gw, site.prior), 180, "the retrieved prior")
    assert _pacs_rows(client.get(f"/studies/{site.current}/priors/pacs").text) == [site.older]


def test_in_chromium_the_pacs_priors_join_the_loaded_page(
    site: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.web.ui.pages import compare

    from .ui_support import CHROMIUM_ARGS, chromium_path

    if chromium_path() is None:
        pytest.skip("Chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    monkeypatch.setattr(compare, "PACS_PRIORS_TIMEOUT", 2.0)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type == "error" else None,
            )
            page.goto(site.gw.base_url + "/login")
            page.fill("#username", "tech.tom")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_load_state()
            page.goto(f"{site.gw.base_url}/studies/{site.current}")
            # Shown while the PACS is asked, then replaced by its answer.
            page.wait_for_selector('#priors-pacs tr[data-source="pacs"]', timeout=60_000)
            rows = page.locator('#priors-pacs tr[data-source="pacs"]')
            uids = [rows.nth(i).get_attribute("data-prior") for i in range(rows.count())]
            assert site.older in uids and site.current not in uids
            assert page.locator("#priors-pacs-asking").count() == 0
            assert page.locator("#priors-pacs-failed").is_visible()  # the hung PACS
            older = page.locator(f'#priors-pacs tr[data-prior="{site.older}"]')
            assert "at PACS" in older.inner_text()
            assert older.get_by_role("button", name="Retrieve the study of 2023-07-15").count() == 1
            assert problems == []
        finally:
            browser.close()
