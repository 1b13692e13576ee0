"""A study whose images the retention policy deleted says so, in the viewer and the API."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update

from overread.security import Role
from overread.service.db import Job, JobState, Study, StudyState, utcnow
from overread.service.retention import run_retention
from overread.service.retention_settings import RetentionSettings

from .conftest import tokens_for_every_role
from .ui_support import PASSWORD, seed_study, ui_gateway, wait_until, write_dx

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _jobs(service: Any, uid: str) -> int:
    with service.database.session() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Job).where(Job.study_instance_uid == uid)
            )
            or 0
        )


def test_the_study_page_and_api_say_when_retention_deleted_the_images(tmp_path: Path) -> None:
    with ui_gateway(tmp_path / "data", stable_seconds=3600, workers=0) as gw:
        dx = write_dx(tmp_path / "stored.dcm", study_uid=generate_uid())
        gw.service.ingestor.ingest_file(dx)
        header = pydicom.dcmread(dx, stop_before_pixels=True)
        uid = seed_study(
            gw, {"Cardiomegaly": 0.6}, uid=str(header.StudyInstanceUID),
            sop_instance_uid=str(header.SOPInstanceUID),
        )  # fmt: skip
        # The assembler announces the study's job on arrival; it is then finished, so
        # nothing pending holds the images.
        wait_until(lambda: _jobs(gw.service, uid) > 0, what="the study's job")
        with gw.service.database.session() as session:
            session.execute(
                update(Study)
                .where(Study.study_instance_uid == uid)
                .values(
                    state=StudyState.ROUTED.value,
                    last_instance_at=utcnow() - timedelta(days=40),
                )
            )
            session.execute(
                update(Job)
                .where(Job.study_instance_uid == uid)
                .values(state=JobState.SUCCEEDED.value)
            )
        token = tokens_for_every_role(gw.service)[Role.RADIOLOGIST]
        client = TestClient(gw.app, follow_redirects=False)
        form = CSRF.search(client.get("/login").text)
        assert form is not None
        client.post(
            "/login",
            data={"csrf_token": form.group(1), "username": "dr.grey", "password": PASSWORD},
        )
        before = client.get(f"/studies/{uid}")
        assert before.status_code == 200 and 'id="heatmap"' in before.text
        assert "images-purged" not in before.text

        report = run_retention(
            gw.service.database, gw.service.store, RetentionSettings(images_days=30)
        )
        assert report.applied == (uid,)

        after = client.get(f"/studies/{uid}")
        today = utcnow().date().isoformat()
        assert after.status_code == 200 and 'id="heatmap"' not in after.text
        assert f"Images deleted by retention policy on {today}." in after.text
        gone = client.get(f"/studies/{uid}/image.png")
        assert gone.status_code == 404, gone.text
        detail = client.get(
            f"/api/studies/{uid}", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert detail["images_purged_at"].startswith(today)
        assert detail["results_purged_at"] is None
