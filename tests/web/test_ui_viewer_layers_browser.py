"""The viewer's SEG contours, its downsampled first level and the model version its layers
come from, in a real Chromium (Playwright, 1600x1000).

One gateway (DICOM listener, a worker running the bundled model with heatmaps and its
class activation regions stored as a DICOM SEG, SQLite) receives one large (2048 x 2048)
phantom chest over DICOM (DCMTK's storescu). Pixels are read back from the main
viewport's canvas. Set ``OVERREAD_UI_SCREENSHOTS=DIR`` to save the viewer with the SEG
outlines (docs/img/viewer-seg.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from overread.harness import storescu
from overread.phantom import example_spec, render_study
from overread.web.ui.pages.viewer import bundle_built

from .ui_support import (
    CHROMIUM_ARGS,
    PASSWORD,
    UiGateway,
    chromium_path,
    ui_gateway,
    wait_until,
    worklist_has,
    write_dx,
)

pytestmark = [
    pytest.mark.service,
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed"),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK storescu not installed"),
    pytest.mark.skipif(not bundle_built(), reason="the viewer bundle is not built (setup.sh)"),
]

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

SIDE = 2048
SCREENSHOTS = os.environ.get("OVERREAD_UI_SCREENSHOTS")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

#: The main viewport's canvas: size, lit pixels, coloured pixels (red and blue apart),
#: pixels in the SEG palette's first colour (orange), and a checksum.
CANVAS_SUMMARY = """() => {
  const canvas = document.querySelector('#viewport canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, coloured = 0, orange = 0, sum = 0;
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i], g = data[i + 1], b = data[i + 2];
    if (r || g || b) { lit++; }
    if (Math.abs(r - b) > 24) { coloured++; }
    if (r > 200 && g > 130 && g < 190 && b < 60) { orange++; }
    sum = (sum * 31 + r + 7 * g + 13 * b) % 1000000007;
  }
  return { width: canvas.width, height: canvas.height, lit, coloured, orange, sum };
}"""


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UiGateway, SimpleNamespace]]:
    folder = tmp_path_factory.mktemp("viewer-layers")
    with ui_gateway(folder / "data", explain=True, cam_segmentation=["cxr-default"]) as gw:
        s = SimpleNamespace(uid=generate_uid())
        path = write_dx(folder / "large.dcm", study_uid=s.uid, size=SIDE)
        spec = example_spec(seed=5, findings=("Pneumothorax", "Pleural Effusion"), size=SIDE)
        pixels, _truth = render_study(spec, np.random.default_rng(7))
        ds = pydicom.dcmread(path)
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        low, high = float(pixels.min()), float(pixels.max())
        ds.WindowCenter, ds.WindowWidth = round((low + high) / 2), round(high - low)
        ds.save_as(path)
        storescu(gw.service.dicom_port, [path])
        wait_until(lambda: worklist_has(gw, s.uid), 240, "the sent study on the worklist")
        yield gw, s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(120_000)
    tab = context.new_page()
    tab.problems = []
    tab.on(
        "console",
        lambda m: tab.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    yield tab
    context.close()


def _login(page: Any, gw: UiGateway) -> None:
    page.goto(gw.base_url + "/login")
    page.fill("#username", "dr.grey")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()


def _canvas(page: Any) -> dict[str, Any]:
    summary: dict[str, Any] = page.evaluate(CANVAS_SUMMARY)
    return summary


def _changed(page: Any, before: dict[str, Any]) -> dict[str, Any]:
    page.wait_for_function(f"() => ({CANVAS_SUMMARY})().sum !== {before['sum']}")
    return _canvas(page)


def _set_layers(page: Any, **shown: bool) -> None:
    for name, on in shown.items():
        box = page.locator(f'input[data-layer="{name}"]')
        if box.is_checked() != on:
            box.click()


def test_a_large_image_shows_a_downsampled_level_before_full_resolution(
    large: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    gw, s = large
    _login(page, gw)
    held: list[Any] = []
    # Hold the full-resolution frame until the downsampled level has been seen.
    page.route("**/frames/1", lambda route: held.append(route))
    page.goto(f"{gw.base_url}/studies/{s.uid}")
    page.wait_for_selector("#viewer[data-level=preview]")
    preview = page.locator("#viewport img.viewer-preview")
    assert preview.is_visible()
    natural = preview.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    box = page.locator("#viewport").bounding_box()
    assert 0 < max(natural) < SIDE  # a downsampled level, not the full image ...
    assert max(natural) <= 2 * max(box["width"], box["height"]) + 1  # ... fitted to the viewport
    assert page.locator("#viewer").get_attribute("data-ready") is None
    wait_until(lambda: bool(held), 30, "the full-resolution frame request")
    for route in held:
        route.continue_()
    page.unroute("**/frames/1")
    page.wait_for_selector("#viewer[data-level=full]")
    assert not preview.is_visible()
    shown = _canvas(page)
    assert shown["lit"] > 0.3 * shown["width"] * shown["height"]
    assert page.problems == []


def test_seg_segments_are_outlined_and_toggle(
    large: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    from overread.service.db import Result

    gw, s = large
    with gw.session() as session:
        artifacts = [a for r in session.scalars(select(Result)) for a in r.artifacts or []]
    assert any(a.get("sop_class_uid") == SEG_STORAGE for a in artifacts), "no SEG stored"
    _login(page, gw)
    page.goto(f"{gw.base_url}/studies/{s.uid}")
    page.wait_for_selector("#viewer[data-level=full]")
    page.wait_for_selector("#viewer[data-layers-ready=true]")
    page.wait_for_function("() => Number(document.getElementById('viewer').dataset.segments) > 0")
    segments = page.request.get(f"{gw.base_url}/studies/{s.uid}/seg.json").json()["segments"]
    labels = {seg["label"] for seg in segments}
    legend = page.locator("#seg-legend").inner_text()
    assert labels and all(label in legend for label in labels)
    # Outlines only: each contour is a closed line, not a filled mask.
    assert all(len(line) >= 4 for seg in segments for line in seg["contours"])

    # With the finding's layers off, the SEG outline alone colours the image ...
    before = _canvas(page)
    _set_layers(page, heatmap=False, contour=False, box=False)
    only_seg = _changed(page, before)
    assert only_seg["orange"] > 50
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.locator("#viewer").screenshot(path=str(Path(SCREENSHOTS) / "viewer-seg.png"))
    # ... few pixels, as an outline is (a filled mask would colour its whole area) ...
    assert only_seg["coloured"] < 0.1 * only_seg["width"] * only_seg["height"]
    # ... and the s key turns it off.
    page.locator("#viewport").focus()
    page.keyboard.press("s")
    without = _changed(page, only_seg)
    assert without["orange"] < only_seg["orange"] / 10
    assert not page.locator('input[data-layer="seg"]').is_checked()
    assert page.problems == []


def test_layers_come_from_the_results_own_model_version(
    large: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    from overread.service.db import Result

    gw, s = large
    with gw.session() as session:
        result = session.scalars(select(Result).where(Result.study_instance_uid == s.uid)).one()
        name, version, result_id = result.model_name, result.model_version, result.id
    finding = "Pneumothorax"
    url = f"{gw.base_url}/studies/{s.uid}/layers.json?finding={finding}"
    _login(page, gw)
    layers = page.request.get(url).json()
    assert layers["model"] == f"{name} {version}" and layers["heatmap_url"]

    # The alias now runs another version than the one that read the study, and that
    # one is not installed: no layers from the wrong model, and the page says why.
    retired = "0.0.1-retired"
    with gw.session() as session:
        session.execute(update(Result).where(Result.id == result_id).values(model_version=retired))
    try:
        page.goto(f"{gw.base_url}/studies/{s.uid}?finding={finding}")
        page.wait_for_selector("#viewer[data-level=full]")
        note = page.locator("#viewer-layers-note")
        page.wait_for_function(
            "() => /not available/.test(document.getElementById('viewer-layers-note').textContent)"
        )
        assert retired in note.inner_text()
        assert page.locator("#viewer").get_attribute("data-layers-ready") is None
        assert page.request.get(url).json()["heatmap_url"] == ""
    finally:
        with gw.session() as session:
            session.execute(
                update(Result).where(Result.id == result_id).values(model_version=version)
            )
    assert page.request.get(url).json()["model"] == f"{name} {version}"


def test_mask_contours_outline_a_mask_at_image_scale() -> None:
    from overread.web.ui.layers import mask_contours

    mask = np.zeros((2000, 1000), dtype=np.uint8)
    mask[500:1500, 200:800] = 1
    [line] = mask_contours(mask, 2000, 1000, side=500)
    xs, ys = [p[0] for p in line], [p[1] for p in line]
    assert min(xs) == pytest.approx(200, abs=5) and max(xs) == pytest.approx(800, abs=5)
    assert min(ys) == pytest.approx(500, abs=5) and max(ys) == pytest.approx(1500, abs=5)
    assert mask_contours(np.zeros((10, 10)), 10, 10) == []
