"""The study viewer without a browser: its script route, the page's viewer section, the
AI layer routes and the geometry of the top region."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid

from overread.explain.regions import peak_region, region_box
from overread.web.ui.layers import heatmap_rgba, region_geometry
from overread.web.ui.pages import viewer as viewer_page

from .test_ui_forms import _client, _login
from .ui_support import UiGateway, seed_study, ui_gateway, write_dx


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiGateway]:
    """A gateway with one stored image on the worklist (no model run)."""
    folder = tmp_path_factory.mktemp("ui-viewer")
    with ui_gateway(folder / "data", stable_seconds=3600) as gw:
        dx = write_dx(folder / "stored.dcm", study_uid=generate_uid())
        assert gw.service.ingestor.ingest_file(dx) is not None
        header = pydicom.dcmread(dx, stop_before_pixels=True)
        gw.imaged = seed_study(  # type: ignore[attr-defined]
            gw,
            {"Cardiomegaly": 0.6},
            uid=str(header.StudyInstanceUID),
            sop_instance_uid=str(header.SOPInstanceUID),
        )
        gw.sop = str(header.SOPInstanceUID)  # type: ignore[attr-defined]
        yield gw


@pytest.fixture
def client(gateway: UiGateway) -> TestClient:
    signed_in = _client(gateway)
    _login(signed_in)
    return signed_in


def test_the_bundle_route_serves_the_built_script_to_signed_in_users(
    gateway: UiGateway, client: TestClient
) -> None:
    if not viewer_page.bundle_built():
        pytest.skip("the viewer bundle is not built (setup.sh)")
    reply = client.get(viewer_page.BUNDLE_URL)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/javascript")
    assert len(reply.content) > 100_000 and b"overreadViewer" in reply.content
    anonymous = _client(gateway).get(viewer_page.BUNDLE_URL)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_a_missing_bundle_is_a_clear_503_and_the_page_says_what_to_run(
    gateway: UiGateway, client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(viewer_page, "BUNDLE", tmp_path / "absent.js")
    reply = client.get(viewer_page.BUNDLE_URL)
    assert reply.status_code == 503
    assert "not built" in reply.text and "setup.sh" in reply.text
    page = client.get(f"/studies/{gateway.imaged}")  # type: ignore[attr-defined]
    assert page.status_code == 200
    assert 'id="viewer-missing"' in page.text and "setup.sh" in page.text
    assert viewer_page.BUNDLE_URL not in page.text
    assert 'id="heatmap"' in page.text  # the heatmap picture still shows the image


def test_study_page_points_the_viewer_at_the_study_over_dicomweb(
    gateway: UiGateway, client: TestClient
) -> None:
    if not viewer_page.bundle_built():
        pytest.skip("the viewer bundle is not built (setup.sh)")
    uid = gateway.imaged  # type: ignore[attr-defined]
    page = client.get(f"/studies/{uid}")
    assert page.status_code == 200
    html = page.text
    assert f'<script src="{viewer_page.BUNDLE_URL}" defer></script>' in html
    assert f'data-metadata="/dicom-web/studies/{uid}/metadata"' in html
    assert f'data-reference="{gateway.sop}"' in html  # type: ignore[attr-defined]
    assert "/layers.json?finding=Cardiomegaly" in html
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-eval" not in csp
    # The viewer's presets are the imaging core's.
    start = html.index('data-presets="') + len('data-presets="')
    presets = json.loads(html[start : html.index('"', start)].replace("&#34;", '"'))
    assert {"name": "lung", "center": -600.0, "width": 1500.0} in presets
    # The session cookie is enough for the WADO-RS requests the viewer makes.
    metadata = client.get(f"/dicom-web/studies/{uid}/metadata")
    assert metadata.status_code == 200 and metadata.json()[0]["00080018"]["Value"] == [gateway.sop]  # type: ignore[attr-defined]


def test_layer_routes_without_a_model_or_study(gateway: UiGateway, client: TestClient) -> None:
    uid = gateway.imaged  # type: ignore[attr-defined]
    # Seeded without a model run: no heatmap, said so, not an error.
    body = client.get(f"/studies/{uid}/layers.json?finding=Cardiomegaly").json()
    assert body["heatmap_url"] == "" and "No heatmap" in body["note"]
    assert client.get(f"/studies/{uid}/heatmap-layer.png?finding=Cardiomegaly").status_code == 404
    assert client.get(f"/studies/{generate_uid()}/layers.json?finding=Edema").status_code == 404
    assert client.get(f"/studies/{uid}/layers.json?finding=Nonsense").json()["heatmap_url"] == ""


def test_region_geometry_outlines_the_top_region_and_boxes_its_peak_part() -> None:
    heat = np.zeros((32, 48), dtype=np.float32)
    heat[8:16, 10:20] = 1.0  # the peak part
    heat[20:28, 30:40] = 0.7  # another part of the top region
    heat[2:4, 2:4] = 0.3  # below half the maximum: outside
    contours, box = region_geometry(heat, rows=320, columns=480)
    # The map is 10x coarser than the image: the box of the peak part, in image pixels.
    assert box == pytest.approx((100.0, 80.0, 200.0, 160.0))
    assert region_box(peak_region(heat)) == (8, 10, 15, 19)
    assert len(contours) == 2  # one ring per part; the weak patch has none
    for ring in contours:
        xs, ys = zip(*ring, strict=True)
        assert ring[0] == ring[-1]  # closed
        assert min(xs) >= 0 and max(xs) <= 480
        assert min(ys) >= 0 and max(ys) <= 320
    first = min(contours, key=lambda ring: min(x for x, _ in ring))
    xs, ys = zip(*first, strict=True)
    assert min(xs) == pytest.approx(100, abs=10) and max(xs) == pytest.approx(200, abs=10)
    assert min(ys) == pytest.approx(80, abs=10) and max(ys) == pytest.approx(160, abs=10)
    assert region_geometry(np.zeros((4, 4)), 10, 10) == ([], None)


def test_heatmap_layer_png_is_cividis_with_alpha_equal_to_the_value() -> None:
    heat = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    picture = np.asarray(Image.open(io.BytesIO(heatmap_rgba(heat))))
    assert picture.shape == (16, 16, 4)
    assert picture[0, 0, 3] == 0 and picture[-1, -1, 3] == 255
    assert picture[-1, -1, 0] > 200 and picture[-1, -1, 2] < 100  # yellow at the top
    assert picture[0, 0, 2] > picture[0, 0, 0]  # blue at the bottom
