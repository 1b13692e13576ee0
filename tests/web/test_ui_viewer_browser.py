"""The study page's image viewer in a real Chromium (Playwright), against a running gateway.

One gateway (DICOM listener, a worker running the bundled model with heatmaps,
SQLite) receives a two-series phantom chest study over DICOM (DCMTK's storescu);
the viewer reads it back through the gateway's WADO-RS with the page's session
cookie. Pixels are read back from the main viewport's canvas, so each assertion is
about what the reader sees. Set ``OVERREAD_UI_SCREENSHOTS=DIR`` to save the viewer
with each layer as PNGs (docs/img holds the ones docs/ui.md shows).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from overread.harness import storescu
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
    pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed"),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK storescu not installed"),
    pytest.mark.skipif(not bundle_built(), reason="the viewer bundle is not built (setup.sh)"),
]

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

SCREENSHOTS = os.environ.get("OVERREAD_UI_SCREENSHOTS")

#: What the main viewport's canvas shows, summarised in the page: its size, how many
#: pixels are not black, how many are coloured (red and blue apart, as cividis is
#: and grey is not), the number of distinct grey levels, and a checksum.
CANVAS_SUMMARY = """() => {
  const canvas = document.querySelector('canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, coloured = 0, sum = 0;
  const levels = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i], g = data[i + 1], b = data[i + 2];
    if (r || g || b) { lit++; }
    if (Math.abs(r - b) > 24) { coloured++; }
    levels.add(g);
    sum = (sum * 31 + r + 7 * g + 13 * b) % 1000000007;
  }
  return { width: canvas.width, height: canvas.height, lit, coloured, levels: levels.size, sum,
           inViewport: canvas.closest('#viewport') !== null };
}"""


class Study:
    """The phantom study: two series, one image each, sent over DICOM and read by the model."""

    uid: str
    reference: str


@pytest.fixture(scope="module")
def study_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UiGateway, Study]]:
    folder = tmp_path_factory.mktemp("viewer")
    with ui_gateway(folder / "data", explain=True) as gw:
        study = Study()
        study.uid = generate_uid()
        files = [
            write_dx(folder / "pa.dcm", study_uid=study.uid, size=512, seed=1),
            write_dx(folder / "second.dcm", study_uid=study.uid, size=384, seed=2),
        ]
        storescu(gw.service.dicom_port, files)
        wait_until(lambda: worklist_has(gw, study.uid), 120, "the sent study on the worklist")
        source, alias, _version = gw.app.state.ui.images.reference(study.uid)
        assert source is not None and alias
        study.reference = source.sop_instance_uid
        yield gw, study


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    tab = context.new_page()
    tab.problems = []  # console errors, page errors and failed responses
    tab.on(
        "console",
        lambda m: tab.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    tab.on(
        "response",
        lambda r: tab.problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
    )
    yield tab
    context.close()


def _open_viewer(page: Any, gw: UiGateway, uid: str) -> None:
    page.goto(gw.base_url + "/login")
    page.fill("#username", "dr.grey")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()
    page.goto(f"{gw.base_url}/studies/{uid}")
    page.wait_for_selector("#viewer[data-ready=true]")
    page.wait_for_selector("#viewer[data-layers-ready=true]", timeout=120_000)


def _canvas(page: Any) -> dict[str, Any]:
    summary: dict[str, Any] = page.evaluate(CANVAS_SUMMARY)
    return summary


def _changed(page: Any, before: dict[str, Any]) -> dict[str, Any]:
    """The canvas once it differs from ``before`` (renders are asynchronous)."""
    page.wait_for_function(f"() => ({CANVAS_SUMMARY})().sum !== {before['sum']}")
    return _canvas(page)


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.locator("#viewer").screenshot(path=str(Path(SCREENSHOTS) / name))


def _set_layers(page: Any, **shown: bool) -> None:
    for name, on in shown.items():
        box = page.locator(f'input[data-layer="{name}"]')
        if box.is_checked() != on:
            box.click()


def test_viewer_renders_the_image_and_window_level_zoom_and_layers_change_it(
    study_gateway: tuple[UiGateway, Study], page: Any
) -> None:
    gw, study = study_gateway
    _open_viewer(page, gw, study.uid)
    assert page.locator("#viewer").get_attribute("data-shown") == study.reference

    # The first canvas on the page is the main viewport, and it shows the image.
    shown = _canvas(page)
    assert shown["inViewport"]
    assert shown["width"] > 300 and shown["height"] > 300
    assert shown["lit"] > 0.3 * shown["width"] * shown["height"]
    assert shown["levels"] > 50  # an image, not a flat fill
    assert shown["coloured"] > 500  # the heatmap layer is on by default
    _shot(page, "viewer.png")

    # A primary-button drag changes window/level, and so the pixels.
    box = page.locator("#viewport canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    voi = page.evaluate("() => window.overreadViewer.viewport.getProperties().voiRange")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 60, steps=8)
    page.mouse.up()
    dragged = _changed(page, shown)
    after = page.evaluate("() => window.overreadViewer.viewport.getProperties().voiRange")
    assert after != voi

    # Zoom (key +) changes them again.
    page.locator("#viewport").focus()
    zoom = page.evaluate("() => window.overreadViewer.viewport.getZoom()")
    page.keyboard.press("+")
    zoomed = _changed(page, dragged)
    assert page.evaluate("() => window.overreadViewer.viewport.getZoom()") > zoom

    # Reset brings the image's own window back; the heatmap layer toggles off and on.
    page.keyboard.press("r")
    reset = _changed(page, zoomed)
    _set_layers(page, heatmap=False)
    without = _changed(page, reset)
    assert without["coloured"] < reset["coloured"] / 4
    page.locator("#viewport").focus()
    page.keyboard.press("v")  # the key does what the checkbox does
    again = _changed(page, without)
    assert again["coloured"] > without["coloured"]
    assert page.locator('input[data-layer="heatmap"]').is_checked()

    # Opacity: a fainter heatmap colours fewer pixels.
    page.locator('input[data-opacity="heatmap"]').fill("100")
    strong = _changed(page, again)
    page.locator('input[data-opacity="heatmap"]').fill("20")
    faint = _changed(page, strong)
    assert faint["coloured"] < strong["coloured"]
    page.locator('input[data-opacity="heatmap"]').fill("50")
    _changed(page, faint)

    # Each layer alone, for the documentation.
    _set_layers(page, heatmap=True, contour=False, box=False)
    _shot(page, "viewer-heatmap.png")
    _set_layers(page, heatmap=False, contour=True, box=True)
    _shot(page, "viewer-region.png")
    _set_layers(page, heatmap=True, contour=True, box=True)
    assert page.problems == []


def test_viewer_tools_presets_readout_ruler_series_and_keys(
    study_gateway: tuple[UiGateway, Study], page: Any
) -> None:
    gw, study = study_gateway
    _open_viewer(page, gw, study.uid)
    shown = _canvas(page)

    # A preset from the imaging core sets its window; 0 returns to the image's own.
    page.keyboard.press("1")
    lung = _changed(page, shown)
    voi = page.evaluate("() => window.overreadViewer.viewport.getProperties().voiRange")
    assert (voi["lower"], voi["upper"]) == pytest.approx((-600 - 750, -600 + 750), abs=1.5)
    page.keyboard.press("0")
    _changed(page, lung)

    # Invert (i) changes the picture; the readout names the pixel under the pointer.
    before = _canvas(page)
    page.keyboard.press("i")
    inverted = _changed(page, before)
    assert page.evaluate("() => window.overreadViewer.viewport.getProperties().invert") is True
    box = page.locator("#viewport canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    readout = page.locator("#viewer-readout").inner_text()
    assert "value" in readout and "mm" in readout

    # The mm ruler (m): a drag measures a length in mm.
    page.keyboard.press("m")
    assert page.locator('[data-action="ruler"]').get_attribute("aria-pressed") == "true"
    x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + box["width"] * 0.4, y, steps=6)
    page.mouse.up()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#viewport svg text')].some(t => /mm/.test(t.textContent))"
    )
    _shot(page, "viewer-ruler.png")
    page.keyboard.press("m")
    assert page.locator('[data-action="ruler"]').get_attribute("aria-pressed") == "false"

    # Every series and image of the study is listed; another one opens in the viewport.
    thumbs = page.locator("#viewer-series .thumb")
    assert thumbs.count() == 2
    assert page.locator("#viewer-series li").count() == 2
    other = next(i for i in range(2) if thumbs.nth(i).get_attribute("data-sop") != study.reference)
    thumbs.nth(other).click()
    page.wait_for_function(
        f"() => document.getElementById('viewer').dataset.shown === "
        f"{thumbs.nth(other).get_attribute('data-sop')!r}"
    )
    _changed(page, inverted)
    assert "AI layers are on another image" in page.locator("#viewer-status").inner_text()

    # ? lists the viewer's keys; Esc closes the help without leaving the page.
    url = page.url
    page.keyboard.press("?")
    assert page.locator("#keys").is_visible()
    assert "heatmap" in page.locator("#keys").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#keys").is_visible()
    assert page.url == url
    assert page.problems == []
