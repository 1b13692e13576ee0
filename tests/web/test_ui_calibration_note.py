"""The study page says, under the findings, which calibration decided them: the site's
(with its name) or the package's global one (with the reason)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from overread.results import FindingResult, ModelRef, Prediction, ResultSummary

from .test_ui_forms import _login
from .ui_support import UiGateway, seed_study, ui_gateway

CALIBRATION = {
    "site": "Northgate",
    "source": "institution",
    "calibration": "site",
    "package_site": "Northgate",
    "method": "isotonic",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiGateway]:
    folder: Path = tmp_path_factory.mktemp("ui-calibration")
    with ui_gateway(folder / "data", stable_seconds=3600) as gw:
        yield gw


def _seed(gw: UiGateway, calibration: dict[str, str] | None) -> str:
    from overread.service.db import Result

    uid = seed_study(gw, {"Pneumothorax": 0.7})
    prediction = Prediction(
        path=None,
        ok=True,
        model=ModelRef("seeded", "0"),
        findings=[FindingResult("Pneumothorax", 0.7, True, 0.4, 0.5)],
    )
    summary = ResultSummary(instances=(prediction,), calibration=calibration).to_dict()
    with gw.session() as session:
        session.add(
            Result(
                job_id=1,
                study_instance_uid=uid,
                model_name="seeded",
                model_version="0",
                summary=summary,
                artifacts=[],
            )
        )
    return uid


def test_the_study_page_says_which_calibration_decided_the_findings(gateway: UiGateway) -> None:
    calibrated = _seed(gateway, CALIBRATION)
    plain = _seed(gateway, None)
    client = TestClient(gateway.app, follow_redirects=False)
    _login(client)
    page = html.unescape(client.get(f"/studies/{calibrated}").text)
    assert 'id="calibration-note"' in page
    note = page.split('id="calibration-note"', 1)[1].split("</p>", 1)[0]
    assert "Site calibration applied: site 'Northgate' (from the institution name)" in note
    assert "isotonic map" in note
    assert page.index('id="findings"') < page.index('id="calibration-note"')
    assert 'id="calibration-note"' not in client.get(f"/studies/{plain}").text
