"""The study page shows the warnings of the model's run from the stored result."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from overread.results import FindingResult, ModelRef, Prediction, ResultSummary

from .test_ui_forms import _login
from .ui_support import UiGateway, seed_study, ui_gateway

WARNING = "the large airways found are 28.9% of the lung and airways (expected under 10.0%)"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiGateway]:
    folder: Path = tmp_path_factory.mktemp("ui-warnings")
    with ui_gateway(folder / "data", stable_seconds=3600) as gw:
        yield gw


def _seed(gw: UiGateway, warnings: list[str]) -> str:
    from overread.service.db import Result

    uid = seed_study(gw, {"Pneumothorax": 0.7})
    prediction = Prediction(
        path=None,
        ok=True,
        model=ModelRef("seeded", "0"),
        findings=[FindingResult("Pneumothorax", 0.7, True, 0.4, 0.5)],
        warnings=list(warnings),
    )
    summary = ResultSummary(instances=(prediction,)).to_dict()
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


def test_the_study_page_shows_the_model_warnings(gateway: UiGateway) -> None:
    warned = _seed(gateway, [WARNING])
    plain = _seed(gateway, [])
    client = TestClient(gateway.app, follow_redirects=False)
    _login(client)
    page = html.unescape(client.get(f"/studies/{warned}").text)
    assert 'class="model-warnings"' in page and WARNING in page
    assert 'class="model-warnings"' not in client.get(f"/studies/{plain}").text


def test_the_warnings_are_escaped(gateway: UiGateway) -> None:
    uid = _seed(gateway, ["<script>alert(1)</script>"])
    client = TestClient(gateway.app, follow_redirects=False)
    _login(client)
    page = client.get(f"/studies/{uid}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page


def test_a_viewer_without_phi_rights_does_not_see_the_warnings(gateway: UiGateway) -> None:
    # A reader's message can echo a header value (here a UID holding a name).
    echo = "Invalid value for VR UI: '1.2.3.JOHNDOE.19610304'"
    uid = _seed(gateway, [echo])
    radiologist = TestClient(gateway.app, follow_redirects=False)
    _login(radiologist)
    assert "JOHNDOE" in radiologist.get(f"/studies/{uid}").text
    admin = TestClient(gateway.app, follow_redirects=False)
    _login(admin, "ada.admin")
    page = admin.get(f"/studies/{uid}")
    assert page.status_code == 200 and uid in page.text
    assert "JOHNDOE" not in page.text and 'class="model-warnings"' not in page.text


def test_a_viewer_without_phi_rights_sees_the_generated_warnings_only(
    gateway: UiGateway,
) -> None:
    generated = "single slice: slice step taken as 2.5 mm"
    echo = "Invalid value for VR UI: '1.2.3.JOHNDOE.19610304'"
    uid = _seed(gateway, [generated, echo])
    admin = TestClient(gateway.app, follow_redirects=False)
    _login(admin, "ada.admin")
    page = html.unescape(admin.get(f"/studies/{uid}").text)
    assert 'class="model-warnings"' in page and generated in page
    assert "JOHNDOE" not in page
    radiologist = TestClient(gateway.app, follow_redirects=False)
    _login(radiologist)
    page = html.unescape(radiologist.get(f"/studies/{uid}").text)
    assert generated in page and "JOHNDOE" in page
