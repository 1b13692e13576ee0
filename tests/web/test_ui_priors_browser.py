"""Priors in a real Chromium (Playwright, 1600x1000): two studies of one patient sent
over DICOM through a running gateway and read by the bundled model; the study page lists
the earlier one, and the comparison shows both images side by side with linked
window/level and zoom and the per-finding change list. Set
``OVERREAD_UI_SCREENSHOTS=DIR`` to save the screenshots docs/ui.md shows."""

from __future__ import annotations

import json
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

SCREENSHOTS = os.environ.get("OVERREAD_UI_SCREENSHOTS")

#: What one viewport's canvas shows: size, pixels not black, grey levels, a checksum.
CANVAS_SUMMARY = """(selector) => {
  const canvas = document.querySelector(selector + ' canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, sum = 0;
  const levels = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] || data[i + 1] || data[i + 2]) { lit++; }
    levels.add(data[i + 1]);
    sum = (sum * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) % 1000000007;
  }
  return { width: canvas.width, height: canvas.height, lit, levels: levels.size, sum };
}"""

CURRENT, PRIOR = "#compare-current", "#compare-prior"


def _study(folder: Path, name: str, study_date: str, findings: tuple[str, ...]) -> tuple[str, Path]:
    """One study of the test patient: a phantom chest (the same anatomy each time) with
    ``findings``, in a DX of the UI tests' patient dated ``study_date``."""
    uid = generate_uid()
    path = write_dx(folder / f"{name}.dcm", study_uid=uid, size=512)
    spec = example_spec(seed=5, findings=findings, size=512)
    pixels, _truth = render_study(spec, np.random.default_rng(7))
    ds = pydicom.dcmread(path)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    low, high = float(pixels.min()), float(pixels.max())
    ds.WindowCenter, ds.WindowWidth = round((low + high) / 2), round(high - low)
    ds.StudyDate = study_date
    ds.IssuerOfPatientID = "HOSP-A"
    ds.save_as(path)
    return uid, path


@pytest.fixture(scope="module")
def patient(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[UiGateway, SimpleNamespace]]:
    folder = tmp_path_factory.mktemp("priors-browser")
    with ui_gateway(folder / "data") as gw:
        s = SimpleNamespace()
        s.prior, prior_file = _study(folder, "prior", "20250115", ())
        s.current, current_file = _study(
            folder, "current", "20260115", ("Cardiomegaly", "Pleural Effusion")
        )
        storescu(gw.service.dicom_port, [prior_file, current_file])
        for uid in (s.prior, s.current):
            wait_until(lambda uid=uid: worklist_has(gw, uid), 180, "the sent study on the worklist")
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
    context.set_default_timeout(60_000)
    tab = context.new_page()
    tab.problems = []
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


def _canvas(page: Any, selector: str) -> dict[str, Any]:
    summary: dict[str, Any] = page.evaluate(CANVAS_SUMMARY, selector)
    return summary


def _changed(page: Any, selector: str, before: dict[str, Any]) -> dict[str, Any]:
    """The canvas once it differs from ``before`` (renders are asynchronous)."""
    page.wait_for_function(
        f"() => ({CANVAS_SUMMARY})({json.dumps(selector)}).sum !== {before['sum']}"
    )
    return _canvas(page, selector)


def _viewport(page: Any, side: str, expression: str) -> Any:
    return page.evaluate(f"() => window.overreadComparison.viewports.{side}.{expression}")


def _drag(page: Any, selector: str, dx: float, dy: float, button: str = "left") -> None:
    box = page.locator(f"{selector} canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button=button)
    page.mouse.move(x + dx, y + dy, steps=8)
    page.mouse.up(button=button)


def _shot(page: Any, name: str, selector: str | None = None) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        target = page.locator(selector) if selector else page
        target.screenshot(path=str(Path(SCREENSHOTS) / name))


def test_prior_listed_and_compared_side_by_side_with_linked_window_level_and_zoom(
    patient: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    gw, s = patient
    page.goto(gw.base_url + "/login")
    page.fill("#username", "dr.grey")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()

    # The study page lists the earlier study, dated, with its AI summary.
    page.goto(f"{gw.base_url}/studies/{s.current}")
    row = page.locator(f'#priors-table tr[data-prior="{s.prior}"]')
    assert row.count() == 1
    assert "2025-01-15" in row.inner_text()
    assert row.locator(".summary").inner_text().strip()
    assert page.locator("#priors-table tbody tr").count() == 1
    _shot(page, "priors-list.png", "#priors")

    # Compare: two viewports, each showing its image.
    row.locator("a.compare-link").click()
    page.wait_for_selector("#compare[data-ready=true]")
    assert page.url.endswith(f"/studies/{s.current}/compare/{s.prior}")
    assert page.locator("#compare canvas").count() >= 2
    current, prior = _canvas(page, CURRENT), _canvas(page, PRIOR)
    for shown in (current, prior):
        assert shown["width"] > 300 and shown["height"] > 300
        assert shown["lit"] > 0.3 * shown["width"] * shown["height"]
        assert shown["levels"] > 50  # an image, not a flat fill
    assert current["sum"] != prior["sum"]  # two different images
    _shot(page, "priors-compare.png")

    # Linked: a window/level drag on the current image changes the prior's pixels too.
    assert page.locator("#compare-link").is_checked()
    _drag(page, CURRENT, 120, 60)
    current = _changed(page, CURRENT, current)
    prior = _changed(page, PRIOR, prior)
    assert _viewport(page, "prior", "getProperties().voiRange") == _viewport(
        page, "current", "getProperties().voiRange"
    )

    # Linked zoom: a right-drag zoom on the prior zooms the current image as well.
    zoom = _viewport(page, "current", "getZoom()")
    _drag(page, PRIOR, 0, 120, button="right")  # down: in
    prior = _changed(page, PRIOR, prior)
    current = _changed(page, CURRENT, current)
    assert _viewport(page, "current", "getZoom()") > zoom * 1.05
    assert _viewport(page, "current", "getZoom()") == pytest.approx(
        _viewport(page, "prior", "getZoom()"), rel=0.02
    )

    # Unlinked (key s): a drag on the current image leaves the prior as it was.
    page.locator(CURRENT).focus()
    page.keyboard.press("s")
    assert not page.locator("#compare-link").is_checked()
    assert page.locator("#compare").get_attribute("data-linked") == "false"
    voi = _viewport(page, "prior", "getProperties().voiRange")
    _drag(page, CURRENT, -80, 40)
    _changed(page, CURRENT, current)
    assert _viewport(page, "prior", "getProperties().voiRange") == voi
    assert _canvas(page, PRIOR)["sum"] == prior["sum"]

    # The change list names every finding both studies scored and how it changed.
    _shot(page, "priors-changes.png", ".changes-panel")
    rows = page.locator("#changes tbody tr")
    assert rows.count() >= 10
    kinds = {rows.nth(i).get_attribute("data-change") for i in range(rows.count())}
    assert kinds <= {
        "new",
        "resolved",
        "decision changed",
        "probability up",
        "probability down",
        "unchanged",
    }
    api = page.evaluate(
        f"() => fetch('/api/studies/{s.current}/compare/{s.prior}').then(r => r.json())"
    )
    assert [c["label"] for c in api["changes"]] == [
        rows.nth(i).get_attribute("data-finding") for i in range(rows.count())
    ]

    # ? lists the comparison's keys; Esc closes them and stays on the page.
    url = page.url
    page.locator(CURRENT).focus()
    page.keyboard.press("?")
    assert "link window/level and zoom" in page.locator("#keys").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#keys").is_visible()
    page.keyboard.press("Escape")
    assert page.url == url
    assert page.problems == []
