"""Monitoring in the running gateway: observations stored by real inference, the
monitoring run routed to a triage channel and the audit log without repeats, the
daily summary, the monitoring page and its charts, and the rollout gauges."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from overread.audit import AuditAction
from overread.audit.schema import AuditEvent
from overread.gateway import Gateway
from overread.harness import storescu
from overread.monitoring import AlertKind, StudyObservation
from overread.service.db import Result
from overread.service.monitor.store import StoredObservation, store_observations
from overread.service.monitor.summary import SUMMARY_KEYS
from overread.service.rollout import ModelRollout
from overread.triage.alerts import MONITORING_NOTICE
from overread.triage.schema import Alert, Feedback

from .conftest import api_token, bearer, job_states, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service]

SCRAPE_TOKEN = "scrape-token-for-tests-0123"
PASSWORD = "correct horse battery"
MODEL = "cxr-synthetic@1.0"
LABELS = ("Pneumothorax", "Lung Opacity")


@dataclass
class Receiver:
    """A loopback webhook that records the JSON it is sent."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield got
    server.shutdown()
    server.server_close()


# -- observations stored by real inference -----------------------------------------------
def _phantom_studies(folder: Path, n: int) -> list[tuple[Path, str, bool]]:
    """``n`` phantom studies (one DX each) from two sites, the second half from a site
    after its detector change; returns (file, institution, drifted)."""
    from dataclasses import replace

    from overread.phantom import DEFAULT_SITES, CohortSampler
    from overread.phantom.cohort import CohortOptions, plan_header, study_spec
    from overread.phantom.dicom import build_dataset, cohort_uids
    from overread.phantom.render import render_study

    sampler = CohortSampler(seed=3, sites=DEFAULT_SITES[:2])
    plans = sampler.plan(n)
    cohort = CohortOptions(n=n, seed=3, rows=256, cols=256, internal=128)
    out = []
    for i, plan in enumerate(plans):
        drifted = i >= n // 2
        if drifted:
            plan = replace(plan, site=plan.site.after_drift())
        pixels, truth = render_study(study_spec(plan, cohort), np.random.default_rng(i))
        header = plan_header(
            plan,
            view=plan.positioning.view,
            uids=cohort_uids(3, plan.index),
            accession=f"MON{i:05d}",
            window=(truth.window_center, truth.window_width),
            pixel_spacing_mm=cohort.field_of_view_mm / cohort.rows,
        )
        path = folder / f"phantom{i}.dcm"
        build_dataset(header, pixels).save_as(path, enforce_file_format=True)
        out.append((path, plan.site.institution, drifted))
    return out


@needs_dcmtk
def test_inference_stores_one_observation_per_analysed_image(
    make_service: Callable[..., Gateway], tmp_path: Path
) -> None:
    from overread.phantom import DEFAULT_SITES

    studies = _phantom_studies(tmp_path, 4)
    sites = {s.institution: s.code for s in DEFAULT_SITES[:2]}
    service = make_service(monitoring={"sites": sites, "interval_seconds": 0})
    storescu(service.dicom_port or 0, [p for p, _, _ in studies], calling="MODALITY", timeout=60)
    wait_until(lambda: job_states(service).count("succeeded") == len(studies))
    with service.database.session() as session:
        rows = session.scalars(select(StoredObservation).order_by(StoredObservation.id)).all()
        results = {r.study_instance_uid: r for r in session.scalars(select(Result)).all()}
        assert len(rows) == len(studies)
        for row in rows:
            assert row.site in set(sites.values())  # the institution, mapped to its code
            result = results[row.study_instance_uid]
            assert row.result_id == result.id
            assert row.model == f"{result.model_name}@{result.model_version}"
            # The probabilities are the model's, as stored in the result.
            [instance] = result.summary["instances"]
            stored = {f["label"]: f["probability"] for f in instance["findings"]}
            data = row.data
            assert dict(zip(data["labels"], data["probabilities"], strict=True)) == pytest.approx(
                stored, abs=1e-5
            )
            assert len(data["embedding"]) == 24 and len(data["image"]) == 10
            assert data["header"][0]  # the manufacturer of the phantom site
    # The drifted site's header changed with its detector (station, model, software).
    by_drift: dict[bool, set[str]] = {}
    institution = {str(p): inst for p, inst, _ in studies}
    assert len(institution) == len(studies)
    with service.database.session() as session:
        for row in session.scalars(select(StoredObservation)).all():
            station = row.data["header"][2]
            by_drift.setdefault(station.endswith("-N"), set()).add(station)
    assert set(by_drift) == {False, True}


# -- the monitoring run over stored observations -----------------------------------------
def _synthetic(uid: str, site: str, day: dt.date, rng: np.random.Generator, shift: float) -> Any:
    """A study's observation with controlled numbers; ``shift`` moves its acquisition."""
    image = rng.normal(
        [0.5, 0.2, 0.1, 0.5, 0.9, 0.01, 4.5, 256, 256, 0.7],
        [0.03, 0.02, 0.02, 0.03, 0.02, 0.002, 0.1, 0, 0, 0],
    ) + shift * np.array([0.12, 0.08, 0.08, 0.12, 0.05, 0.01, 0.4, 0, 0, 0])
    embedding = rng.normal(0.5, 0.05, 24) + shift * 0.1
    probabilities = rng.uniform(0, 1, len(LABELS))
    return StudyObservation(
        study_instance_uid=uid,
        site=site,
        date=day,
        model=MODEL,
        header=(
            "Acme",
            "X1",
            f"ST-{site}",
            "DX",
            "PA",
            "110",
            "2",
            "DIRECT",
            "12",
            "MONOCHROME2",
            "1",
        ),
        image=tuple(float(v) for v in image),
        labels=LABELS,
        probabilities=tuple(float(p) for p in probabilities),
        positive=tuple(bool(p >= 0.5) for p in probabilities),
        embedding=tuple(float(v) for v in embedding),
        patient_id=uid,
    )


def _seed(service: Gateway, today: dt.date, days: int = 36, per_day: int = 12) -> None:
    """Observations of two sites over ``days`` days; site NGH's acquisition drifts over
    the last 10; reader labels (unrelated to the model's output) on site RVH's
    Pneumothorax calls of the last 20 days."""
    rng = np.random.default_rng(7)
    start = today - dt.timedelta(days=days - 1)
    with service.database.session() as session:
        for d in range(days):
            day = start + dt.timedelta(days=d)
            for site in ("NGH", "RVH"):
                shift = 1.0 if site == "NGH" and d >= days - 10 else 0.0
                for k in range(per_day):
                    uid = f"1.2.826.0.1.3680043.10.{d}.{k}.{1 if site == 'NGH' else 2}"
                    o = _synthetic(uid, site, day, rng, shift)
                    store_observations(session, 0, [o])
                    if site == "RVH" and d >= days - 20:
                        session.add(
                            Feedback(
                                study_instance_uid=uid,
                                finding="Pneumothorax",
                                verdict="label",
                                label=float(rng.random() < 0.4),
                                reader="dr.grey",
                            )
                        )


@pytest.fixture
def monitored(
    make_service: Callable[..., Gateway], receiver: Receiver, database_url: str
) -> tuple[Gateway, dt.date]:
    """A gateway on SQLite or PostgreSQL with 36 days of observations (:func:`_seed`)."""
    service = make_service(
        database_url=database_url,
        service_options={"with_scp": False},
        triage={"alerts": {"channels": [{"name": "ops", "kind": "webhook", "url": receiver.url}]}},
        monitoring={
            "interval_seconds": 0,
            "mmd_permutations": 20,
            "baseline_auc": {"Pneumothorax": 0.92},
        },
        metrics_scrape_token=SCRAPE_TOKEN,
    )
    today = dt.datetime.now(dt.UTC).date()
    _seed(service, today)
    return service, today


def _audited(service: Gateway) -> int:
    with service.database.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == AuditAction.MONITORING_ALERT.value)
            )
            or 0
        )


def test_run_routes_new_alerts_to_the_channel_and_audit_once(
    monitored: tuple[Gateway, dt.date], receiver: Receiver
) -> None:
    service, today = monitored
    run = service.run_monitoring(day=today)
    kinds = {(a.kind, a.subject) for a in run.routed}
    assert (AlertKind.ACQUISITION_DRIFT, "site NGH") in kinds
    assert (AlertKind.ACQUISITION_DRIFT, "site RVH") not in kinds
    assert not any(a.kind is AlertKind.OUTPUT_DRIFT for a in run.routed)
    # Labels unrelated to the output: the AUC at RVH falls far below the baseline.
    assert (AlertKind.PERFORMANCE, "Pneumothorax, site RVH") in kinds
    # Every new alert went out on the webhook as a monitoring message, not a finding.
    wait_until(lambda: len(receiver.received) == len(run.routed), timeout=20)
    drift = [m for m in receiver.received if m["kind"] == "acquisition_drift"]
    assert [m["subject"] for m in drift] == ["site NGH"]
    for message in receiver.received:
        assert message["source"] == "monitoring"
        assert message["notice"] == MONITORING_NOTICE
        assert "study_instance_uid" not in message and "probability" not in message
    assert _audited(service) == len(run.routed)
    with service.database.session() as session:
        stored = session.scalars(select(Alert).where(Alert.study_instance_uid == "")).all()
        assert len(stored) == len(run.routed)
        assert all(a.finding.startswith("monitoring:") for a in stored)

    again = service.run_monitoring(day=today)
    assert again.routed == []
    assert again.repeated  # the same conditions, found again, not alerted again
    assert len(receiver.received) == len(run.routed)
    assert _audited(service) == len(run.routed)


def test_summary_page_and_charts(monitored: tuple[Gateway, dt.date]) -> None:
    service, today = monitored
    run = service.run_monitoring(day=today)
    base = f"http://127.0.0.1:{service.http_port}"
    reader = bearer(api_token(service, "radiologist"))

    reply = httpx.get(f"{base}/api/monitoring/summary", params={"date": str(today)}, headers=reader)
    assert reply.status_code == 200, reply.text
    summary = reply.json()
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["alerts"]["monitoring"] == len(run.routed)
    assert {d["site"]: d["status"] for d in summary["drift"]} == {"NGH": "alert", "RVH": "ok"}
    [pneumothorax] = [
        p for p in summary["performance"] if p["label"] == "Pneumothorax" and p["window_days"] == 30
    ]
    assert pneumothorax["status"] == "alert" and pneumothorax["baseline"] == 0.92
    assert set(summary["latency_seconds"]) == {"turnaround", "processing", "model"}
    assert set(summary["refusals"]) == {"not_analysed_studies", "refused_images", "failed_jobs"}
    bad = httpx.get(f"{base}/api/monitoring/summary", params={"date": "May 1"}, headers=reader)
    assert bad.status_code == 422

    for chart in ("activity", "drift", "auc", "latency"):
        png = httpx.get(f"{base}/api/monitoring/plots/{chart}.png", headers=reader)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert httpx.get(f"{base}/api/monitoring/plots/drift.png").status_code == 401
    auditor = bearer(api_token(service, "auditor"))
    assert httpx.get(f"{base}/api/monitoring/plots/drift.png", headers=auditor).status_code == 403
    assert httpx.get(f"{base}/api/monitoring/summary", headers=auditor).status_code == 403

    # The page, for a signed-in radiologist: its charts and the open monitoring alerts.
    from overread.security import add_user

    with service.database.session() as session:
        add_user(session, "dr.mon", "radiologist", password=PASSWORD, actor="tests")
        add_user(session, "au.mon", "auditor", password=PASSWORD, actor="tests")
    for user, expected in (("dr.mon", 200), ("au.mon", 403)):
        with httpx.Client(base_url=base, follow_redirects=False) as client:
            form = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            done = client.post(
                "/login",
                data={"csrf_token": token.group(1), "username": user, "password": PASSWORD},
            )
            assert done.status_code == 303
            page = client.get("/monitoring", params={"date": str(today)})
            assert page.status_code == expected
            if expected == 200:
                for chart in ("activity", "drift", "auc", "latency"):
                    assert f"/api/monitoring/plots/{chart}.png" in page.text
                    assert client.get(f"/api/monitoring/plots/{chart}.png").status_code == 200
                assert "site NGH" in page.text and 'href="/monitoring"' in page.text
                # Monitoring alerts are not on the critical alerts page.
                assert "monitoring:" not in client.get("/alerts").text
    with httpx.Client(base_url=base, follow_redirects=False) as anonymous:
        assert anonymous.get("/monitoring").status_code in (302, 303, 307)


def test_cli_run_and_summary(monitored: tuple[Gateway, dt.date]) -> None:
    service, today = monitored
    first = service.run_monitoring(day=today)
    data_dir = str(service.config.data_dir)

    def overread(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "overread",
                *args,
                "--data-dir",
                data_dir,
                "--database-url",
                service.config.database_url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = overread("monitor", "run", "--json", "--date", str(today))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["alerts"] == [] and len(report["repeated"]) >= len(first.routed)
    assert report["observations"] == 36 * 24
    summary = overread("monitor", "summary", "--json", "--date", str(today))
    assert summary.returncode == 0, summary.stderr
    assert set(json.loads(summary.stdout)) == set(SUMMARY_KEYS)
    bad = overread("monitor", "summary", "--date", "yesterday")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["error: --date 'yesterday': not a date (YYYY-MM-DD)"]


def test_metrics_show_rollout_state_and_canary_share(monitored: tuple[Gateway, dt.date]) -> None:
    service, _ = monitored
    with service.database.session() as session:
        session.add(
            ModelRollout(
                alias="cxr",
                state="canary",
                active_ref="cxr-default@1.0",
                candidate_ref="cxr-default@1.1",
                canary_share=2500,
                bounds={},
                reason="",
                actor="tests",
            )
        )
    reply = httpx.get(f"http://127.0.0.1:{service.http_port}/metrics", headers=bearer(SCRAPE_TOKEN))
    assert reply.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in samples.items()
        if name == "overread_rollout_state" and dict(labels)["alias"] == "cxr"
    }
    assert states == {"shadow": 0.0, "canary": 1.0, "promoted": 0.0, "rolled-back": 0.0}
    assert samples[("overread_rollout_canary_share", (("alias", "cxr"),))] == 0.25


# -- settings and baselines ----------------------------------------------------------------
def test_site_mapping_prefers_the_calling_ae_then_the_institution() -> None:
    from overread.service.monitor.settings import MonitoringSettings

    settings = MonitoringSettings(sites={"CR_NORTH": "NGH", "South Clinic": "SCL"})
    assert settings.site_of("CR_NORTH", "South Clinic") == "NGH"
    assert settings.site_of("OTHER", "South Clinic") == "SCL"
    assert settings.site_of("OTHER", "Elsewhere") == "Elsewhere"
    assert settings.site_of("OTHER", "") == "OTHER"
    by_ae = MonitoringSettings(site_source="calling_ae")
    assert by_ae.site_of("CR_EAST", "Elsewhere") == "CR_EAST"
    assert MonitoringSettings().site_of("", "") == "unknown"


def test_baselines_come_from_the_package_validation_report() -> None:
    from overread.config import load_settings
    from overread.models.registry import Registry
    from overread.service.monitor.run import registry_baselines, validation_aucs

    registry = Registry.from_settings(load_settings())
    package = registry.load("cxr-default")
    ref = f"{package.manifest.name}@{package.manifest.version}"
    baseline = registry_baselines(registry)(ref)
    per_label = package.manifest.metrics["evaluations"]["test"]["per_label"]
    assert baseline == {k: v["auc"] for k, v in per_label.items()}
    assert registry_baselines(registry)("no-such-model@9.9") == {}
    assert validation_aucs({"evaluations": {"val": {"per_label": {"A": {"auc": 0.4}}}}}) == {}


def test_a_subgroup_gap_in_equal_opportunity_raises_one_fairness_alert(
    make_service: Callable[..., Gateway], receiver: Receiver
) -> None:
    """Reader labels where the model finds every pneumothorax in women and misses it in
    men: the true-positive-rate gap's interval lies far outside 0.2."""
    from dataclasses import replace as replaced

    service = make_service(
        service_options={"with_scp": False},
        triage={"alerts": {"channels": [{"name": "ops", "kind": "webhook", "url": receiver.url}]}},
        monitoring={"interval_seconds": 0, "mmd_permutations": 20},
    )
    today = dt.datetime.now(dt.UTC).date()
    rng = np.random.default_rng(11)
    with service.database.session() as session:
        for d in range(20):
            day = today - dt.timedelta(days=19 - d)
            for k in range(12):
                uid = f"1.2.826.0.1.3680043.11.{d}.{k}"
                sex = "F" if k % 2 else "M"
                present = rng.random() < 0.5
                found = present and sex == "F"
                p = float(rng.uniform(0.6, 0.95) if found else rng.uniform(0.02, 0.4))
                o = replaced(
                    _synthetic(uid, "RVH", day, rng, 0.0),
                    probabilities=(p, 0.1),
                    positive=(p >= 0.5, False),
                    sex=sex,
                )
                store_observations(session, 0, [o])
                session.add(
                    Feedback(
                        study_instance_uid=uid,
                        finding="Pneumothorax",
                        verdict="label",
                        label=float(present),
                        reader="dr.grey",
                    )
                )

    run = service.run_monitoring(day=today)

    fairness = [a for a in run.routed if a.kind is AlertKind.FAIRNESS]
    tpr = [a for a in fairness if a.statistic == "tpr_gap"]
    assert len(tpr) == 1 and tpr[0].subject.startswith("Pneumothorax, sex=")
    wait_until(lambda: any(m.get("kind") == "fairness" for m in receiver.received), timeout=20)
    assert _audited(service) == len(run.routed)
    again = service.run_monitoring(day=today)
    assert not any(a.kind is AlertKind.FAIRNESS for a in again.routed)
