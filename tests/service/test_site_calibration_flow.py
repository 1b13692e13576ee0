"""Per-site calibration in the running service: phantom studies of two calibrated sites
and one unknown site, sent with DCMTK storescu to ``overread serve``; each study's
probabilities and thresholds come from its own site's calibration (the unknown site's
from the package's global one), and the result and the audit record say which."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from scipy.special import expit, logit
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.harness import storescu
from overread.inference import Pipeline
from overread.models import load_package
from overread.models.manifest import SiteCalibrationEntry, SiteCalibrationSection, SiteLabelMap
from overread.models.package import ModelPackage, derive_package
from overread.models.registry import Registry, bundled_dir
from overread.service.db import Database, Job, Result

from .conftest import Storescp, free_port, needs_dcmtk, wait_for_port

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

#: The package's sites (named by the service's mapping of station names) and their maps.
SITES = {"Northgate": (0.5, 0.61), "Riverside": (2.0, 0.17)}

CONFIG = """
[service.site_calibration]
source = "station"
sites = {"NGH-DX01" = "Northgate", "RMC-CR02" = "Riverside"}
"""


def _package(out: Path) -> ModelPackage:
    """The bundled model with two sites: Northgate sharpened (T 0.5), Riverside
    softened (T 2), each with its own balanced threshold for every label."""
    source = load_package(bundled_dir() / "cxr-default")
    entries = {
        site: SiteCalibrationEntry(
            method="temperature",
            labels={
                label: SiteLabelMap(
                    temperature=temperature,
                    operating_points={"balanced": threshold},
                    n=60,
                    n_positive=20,
                )
                for label in source.labels
            },
            n=60,
        )
        for site, (temperature, threshold) in SITES.items()
    }
    section = SiteCalibrationSection(min_images=30, min_per_class=5, sites=entries)
    return derive_package(source, out, version="1.5.3+sites", site_calibration=section)


def _studies(out: Path) -> dict[str, list[Path]]:
    """One phantom study (its image files) of each of NGH, RMC and LKC."""
    from overread.phantom import generate_cohort

    generate_cohort(out, 16, 3, rows=256, cols=256, internal=128, sites=4, workers=1)
    chosen: dict[str, list[Path]] = {}
    with (out / "truth.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            site = row["Site"]
            if site in ("NGH", "RMC", "LKC") and site not in chosen:
                chosen[site] = sorted((out / row["Path"]).parent.glob("*.dcm"))
    assert set(chosen) == {"NGH", "RMC", "LKC"}, "the seed must give a study of each site"
    return chosen


@pytest.fixture
def serve(tmp_path: Path, storescp: Storescp) -> Iterator[tuple[int, Path]]:
    data = tmp_path / "data"
    Registry(data / "models").import_package(_package(tmp_path / "pkg").path)
    (tmp_path / "overread.toml").write_text(f'model_registry = "{data / "models"}"\n{CONFIG}')
    dicom_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERREAD_")}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "overread", "serve", "--data-dir", str(data),
                "--dicom-port", str(dicom_port), "--http-port", str(http_port),
                "--destination", f"PACS=PACSAE@127.0.0.1:{storescp.port}",
                "--allow-ae", "MODALITY@127.0.0.1", "--stable-seconds", "2", "--workers", "1",
            ],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(dicom_port, timeout=120)
        yield dicom_port, data
    finally:
        process.terminate()
        process.wait(60)
    print(log.read_text()[-4000:])


def _results(db: Database) -> list[Result]:
    with db.session() as session:
        return list(session.scalars(select(Result)).all())


def test_each_study_gets_its_own_site_s_calibration(
    serve: tuple[int, Path], tmp_path: Path
) -> None:
    port, data = serve
    studies = _studies(tmp_path / "cohort")
    for files in studies.values():
        storescu(port, files, called="OVERREAD", calling="MODALITY", timeout=60)
    db = Database(f"sqlite:///{data / 'overread.db'}", create=False)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(_results(db)) < 3:
        time.sleep(0.5)
    results = {r.study_instance_uid: r for r in _results(db)}
    assert len(results) == 3, "three studies, three results"

    package = load_package(data / "models" / "cxr-default" / "1.5.3+sites")
    pipeline = Pipeline(package)  # the package's own (global) probabilities, as served
    global_points = package.thresholds("balanced")
    expected_site = {"NGH": "Northgate", "RMC": "Riverside", "LKC": None}
    for code, files in studies.items():
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        result = results[str(headers[0].StudyInstanceUID)]
        with db.session() as session:
            job = session.get(Job, result.job_id)
            assert job is not None and job.model_version == "1.5.3+sites"
        summary = result.summary
        calibration = summary["calibration"]
        local = {
            str(h.SOPInstanceUID): p
            for h, p in zip(headers, pipeline.predict([str(f) for f in files]), strict=True)
        }
        site = expected_site[code]
        if site is None:
            assert calibration["calibration"] == "global"
            # Its station is not in the mapping: never taken as a site name as it is.
            assert calibration["site"] == "LKC-DX04" and calibration["source"] == "station"
            assert calibration["unmapped"] is True
            assert "not in the [service.site_calibration] sites" in calibration["reason"]
        else:
            assert calibration == {
                "site": site,
                "source": "station",
                "calibration": "site",
                "package_site": site,
                "method": "temperature",
            }
        analysed = 0
        for uid, stored in zip(summary["sop_instance_uids"], summary["instances"], strict=True):
            if not stored["ok"]:
                continue
            analysed += 1
            mine = local[uid]
            for i, finding in enumerate(stored["findings"]):
                p_global = mine.finding(finding["label"]).probability
                if site is None:
                    assert finding["probability"] == pytest.approx(p_global, abs=1e-5)
                    assert finding["threshold"] == pytest.approx(float(global_points[i]))
                else:
                    temperature, threshold = SITES[site]
                    want = float(expit(logit(p_global) / temperature))
                    assert finding["probability"] == pytest.approx(want, abs=1e-5)
                    assert finding["threshold"] == threshold
                assert finding["positive"] == (finding["probability"] >= finding["threshold"])
        assert analysed >= 1

    with db.session() as session:
        audited = [
            e.details
            for e in session.scalars(select(AuditEvent)).all()
            if "calibration" in (e.details or {})
        ]
    assert sorted(d["calibration"]["calibration"] for d in audited) == ["global", "site", "site"]
    assert [d["calibration"].get("unmapped") for d in audited].count(True) == 1
    log = (tmp_path / "serve.log").read_text()
    assert "station 'LKC-DX04' is not in [service.site_calibration] sites" in log
