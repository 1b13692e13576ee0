"""Helpers for the web UI tests: a running gateway with the UI, users, studies, Chromium."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from overread.harness import write_chest_dx

PASSWORD = "correct horse battery"
#: user name -> role of the accounts every test gateway has.
USERS = {
    "dr.grey": "radiologist",
    "tech.tom": "technologist",
    "ada.admin": "admin",
    "audrey.audit": "auditor",
    "lee.lockout": "technologist",
}
#: A patient name that appears nowhere else in the pages.
PATIENT_NAME = "Quillfeather^Zebediah"
PATIENT_FAMILY = "Quillfeather"
PATIENT_ID = "PID-77341"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


#: A small chest DX (16-bit MONOCHROME2) of the UI tests' patient, in a given study.
write_dx = partial(
    write_chest_dx,
    patient_name=PATIENT_NAME,
    patient_id=PATIENT_ID,
    department="Emergency Department",
    accession="ACC-UI-1",
    birth_date="19500101",
    age="076Y",
    size=256,
)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 90.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


@dataclass
class UiGateway:
    """A running gateway serving only the web UI, and where to reach it."""

    service: Any
    server: Any
    app: Any
    base_url: str
    data_dir: Path

    def session(self) -> Any:
        """A transactional database session (``with gw.session() as s``)."""
        return self.service.database.session()


def add_users(service: Any) -> None:
    """Create the accounts of :data:`USERS`, all with :data:`PASSWORD`."""
    from overread.security import add_user

    with service.database.session() as session:
        for name, role in USERS.items():
            add_user(session, name, role, password=PASSWORD, actor="os:test")


@contextmanager
def ui_gateway(data_dir: Path, *, artifacts: Any = True, **overrides: Any) -> Iterator[UiGateway]:
    """A gateway (DICOM listener, one worker, SQLite) with its web app on a free port."""
    from overread.config import Settings
    from overread.harness.gateway import QUICK_TIMINGS, loopback_config, running_gateway
    from overread.service.http import HttpServer
    from overread.web.app import create_app

    config = loopback_config(Settings(data_dir=data_dir), **{**QUICK_TIMINGS, **overrides})
    with running_gateway(config, stop_timeout=10, artifacts=artifacts, with_http=False) as service:
        add_users(service)
        app = create_app(service)  # the REST API and the UI, as ``overread serve`` runs them
        server = HttpServer(app, "127.0.0.1", 0)
        port = server.start()
        try:
            yield UiGateway(service, server, app, f"http://127.0.0.1:{port}", data_dir)
        finally:
            server.stop()


def seed_study(
    gateway: UiGateway,
    findings: dict[str, float],
    *,
    department: str = "",
    age: float | None = 50,
    waited: timedelta = timedelta(minutes=10),
    uid: str | None = None,
    sop_instance_uid: str = "",
) -> str:
    """Put a study on the worklist (scored, alerts raised) without running a model.

    ``sop_instance_uid`` names its reference image, if one was stored.
    """
    from overread.results import FindingResult
    from overread.service.db import utcnow
    from overread.triage import StudyContext, raise_alerts, upsert_study

    uid = uid or generate_uid()
    now = utcnow()
    stored = [
        FindingResult(label, p, p >= 0.5, 1 - abs(p - 0.5) * 2, 0.5)
        for label, p in findings.items()
    ]
    config = _triage_config(gateway)
    with gateway.session() as session:
        item = upsert_study(
            session,
            uid,
            stored,
            StudyContext(department, age, now - waited),
            config,
            now=now,
            model_name="seeded",
            model_version="0",
            sop_instance_uid=sop_instance_uid,
        )
        raise_alerts(session, item, config, now=now)
    return uid


def _triage_config(gateway: UiGateway) -> Any:
    from overread.triage import TriageConfig

    return TriageConfig.model_validate(gateway.service.config.triage)


def worklist_has(gateway: UiGateway, uid: str) -> bool:
    """Whether ``uid`` is on the worklist."""
    from overread.triage import get_item

    with gateway.session() as session:
        try:
            get_item(session, uid)
        except KeyError:
            return False
    return True


def chromium_path() -> str | None:
    """The system Chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def recent(moment: datetime, within: timedelta = timedelta(minutes=5)) -> bool:
    """Whether ``moment`` is within ``within`` of now."""
    from overread.service.db import utcnow

    return abs(utcnow() - moment) <= within


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2]


def measure(rows: int = 2000, repeats: int = 20) -> dict[str, float]:
    """Median server time (ms) of the main pages, in-process, on a worklist of ``rows``.

    Run: ``python tests/web/ui_support.py --measure`` (see docs/ui.md).
    """
    import re
    import tempfile

    from fastapi.testclient import TestClient

    from overread.results import FindingResult
    from overread.service.db import utcnow
    from overread.triage import StudyContext, upsert_study

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, ui_gateway(Path(tmp) / "data", explain=True) as gw:
        config = _triage_config(gw)
        now = utcnow()
        rng = np.random.default_rng(0)
        with gw.session() as session:
            for _ in range(rows):
                p = rng.random(3)
                found = [
                    FindingResult(label, float(v), bool(v > 0.5), float(1 - abs(v - 0.5) * 2), 0.5)
                    for label, v in zip(("Pneumothorax", "Edema", "Cardiomegaly"), p, strict=True)
                ]
                upsert_study(
                    session,
                    generate_uid(),
                    found,
                    StudyContext("ED", 60, now - timedelta(minutes=int(rng.integers(0, 600)))),
                    config,
                    now=now,
                )
        uid = generate_uid()
        dx = write_dx(Path(tmp) / "one.dcm", study_uid=uid)
        gw.service.ingestor.ingest_file(dx)
        gw.service.complete_study(uid)
        wait_until(lambda: worklist_has(gw, uid), 120, "the model's result")
        client = TestClient(gw.app, follow_redirects=False)
        form = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        client.post(
            "/login",
            data={"csrf_token": token.group(1), "username": "dr.grey", "password": PASSWORD},
        )
        results["worklist page (50 rows, with patient names)"] = _median_ms(
            lambda: client.get("/"), repeats
        )
        results["worklist refresh fragment"] = _median_ms(
            lambda: client.get("/worklist/rows"), repeats
        )
        results["study page"] = _median_ms(lambda: client.get(f"/studies/{uid}"), repeats)
        images = gw.app.state.ui.images
        overlays = images.stored_overlays(uid)
        label = next(iter(overlays))
        results["stored overlay PNG, first"] = _median_ms(
            lambda: client.get(f"/studies/{uid}/image.png?finding={label}"), 1
        )
        results["stored overlay PNG, cached"] = _median_ms(
            lambda: client.get(f"/studies/{uid}/image.png?finding={label}"), repeats
        )
        other = next(f for f in ("No Finding", "Fracture", "Pneumothorax") if f not in overlays)
        results["on-demand heatmap PNG, first"] = _median_ms(
            lambda: client.get(f"/studies/{uid}/image.png?finding={other}"), 1
        )
        with gw.session() as session:
            from sqlalchemy import func, select

            from overread.audit import AuditEvent

            events = session.scalar(select(func.count()).select_from(AuditEvent))
        results[f"audit page with verification ({events} records)"] = _median_ms(
            lambda: client.get("/audit"), 5
        )
    return results


if __name__ == "__main__":
    import sys

    if "--measure" in sys.argv:
        for name, ms in measure().items():
            print(f"{name}: {ms:.1f} ms")
