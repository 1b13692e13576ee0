"""A site's own operating points in the running service: the route's package decides at
its default operating point (here "high sensitivity", not "balanced"), so a study from a
calibrated site gets that site's threshold for that point, and the worklist, its
critical alerts and priority follow the site-calibrated finding, not the global one."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.config import Settings
from overread.harness import storescu
from overread.harness.gateway import QUICK_TIMINGS, loopback_config, running_gateway
from overread.inference import Pipeline
from overread.models import load_package
from overread.models.manifest import SiteCalibrationEntry, SiteCalibrationSection, SiteLabelMap
from overread.models.package import ModelPackage, derive_package
from overread.models.registry import Registry, bundled_dir
from overread.service.db import Result
from overread.triage import get_item
from overread.triage.worklist import stored_findings

from .conftest import make_dx, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

LABEL = "Pneumothorax"
#: Northgate's map sends every Pneumothorax probability to 0.8; its thresholds differ
#: by operating point, so the decision says which point was used.
MAPPED = 0.8
SITE_POINTS = {"balanced": 0.95, "high sensitivity": 0.6}


def _package(out: Path) -> ModelPackage:
    source = load_package(bundled_dir() / "cxr-default")
    entry = SiteCalibrationEntry(
        method="isotonic",
        labels={
            LABEL: SiteLabelMap(
                x=[0.0, 1.0], y=[MAPPED, MAPPED], operating_points=SITE_POINTS, n=80, n_positive=20
            )
        },
        n=80,
    )
    return derive_package(
        source,
        out,
        version="1.5.3+hs",
        default_operating_point="high sensitivity",
        site_calibration=SiteCalibrationSection(
            min_images=30, min_per_class=5, sites={"Northgate": entry}
        ),
    )


def test_the_site_s_threshold_at_the_route_s_operating_point_decides_the_worklist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    # The service's model provider reads the registry from the settings it loads.
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(data / "models"))
    registry = Registry(data / "models")
    registry.import_package(_package(tmp_path / "pkg").path)
    settings = Settings(
        data_dir=data,
        model_registry=data / "models",
        service={"site_calibration": {"source": "calling_ae", "sites": {"NGHAE": "Northgate"}}},
    )
    config = loopback_config(settings, **{**QUICK_TIMINGS, "stable_seconds": 2})
    package = registry.load("cxr-default")
    assert package.version == "1.5.3+hs"
    files = {
        "NGHAE": make_dx(tmp_path / "ngh.dcm", size=256, seed=1, study_uid=generate_uid()),
        "OTHERAE": make_dx(tmp_path / "other.dcm", size=256, seed=1, study_uid=generate_uid()),
    }
    # The package's own (global) Pneumothorax call on this image: below the alert
    # threshold and negative, so the site's map is what makes it critical.
    own = Pipeline(package).predict([str(files["NGHAE"])])[0].finding(LABEL)
    assert own.probability < 0.5 and not own.positive
    assert own.operating_point == "high sensitivity"

    with running_gateway(config, stop_timeout=10, registry=registry, with_http=False) as service:
        for calling, path in files.items():
            storescu(service.dicom_port, [path], calling=calling, timeout=60)

        def results() -> list[Result]:
            with service.database.session() as session:
                return list(session.scalars(select(Result)).all())

        wait_until(lambda: len(results()) == 2, timeout=180)
        by_study = {r.study_instance_uid: r for r in results()}
        uids = {k: str(pydicom.dcmread(p).StudyInstanceUID) for k, p in files.items()}
        site = by_study[uids["NGHAE"]].summary
        other = by_study[uids["OTHERAE"]].summary
        assert site["calibration"]["calibration"] == "site"
        assert other["calibration"]["calibration"] == "global"

        def stored(summary: dict) -> dict:  # type: ignore[type-arg]
            return next(f for f in summary["instances"][0]["findings"] if f["label"] == LABEL)

        calibrated = stored(site)
        assert calibrated["probability"] == pytest.approx(MAPPED)
        assert calibrated["threshold"] == SITE_POINTS["high sensitivity"]  # not "balanced"
        assert calibrated["positive"] is True and calibrated["decision"] == "positive"
        assert stored(other)["probability"] == pytest.approx(own.probability, abs=1e-5)
        assert stored(other)["threshold"] == pytest.approx(own.threshold)

        # The SR the service built and sent says which calibration decided it.
        for uid, expected in (
            (uids["NGHAE"], "Site calibration applied: site 'Northgate'"),
            (uids["OTHERAE"], "Global calibration applied to site 'OTHERAE'"),
        ):
            [key] = [a["key"] for a in by_study[uid].artifacts if a["modality"] == "SR"]
            sr = pydicom.dcmread(BytesIO(service.store.read(key)))
            assert expected in " ".join(_texts(sr))

        with service.database.session() as session:
            wait_until(lambda: _on_worklist(service, uids), timeout=60)
            ngh = get_item(session, uids["NGHAE"])
            unknown = get_item(session, uids["OTHERAE"])
            on_list = {f.label: f for f in stored_findings(ngh)}[LABEL]
            assert on_list.probability == pytest.approx(MAPPED) and on_list.positive
            assert on_list.threshold == SITE_POINTS["high sensitivity"]
            assert LABEL in (ngh.critical_findings or []) and ngh.has_critical
            assert LABEL not in (unknown.critical_findings or [])
            assert ngh.score > unknown.score


def _texts(dataset: Any) -> list[str]:
    out = []
    for item in dataset.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out.extend(_texts(item))
    return out


def _on_worklist(service: object, uids: dict[str, str]) -> bool:
    with service.database.session() as session:  # type: ignore[attr-defined]
        try:
            for uid in uids.values():
                get_item(session, uid)
        except KeyError:
            return False
    return True
