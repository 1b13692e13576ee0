"""The radiologist's screen in a real Chromium (Playwright, 1600x1000): the study page's
layout and verdicts, keyboard-only use, and an automated accessibility check (axe-core,
from the viewer's npm dependencies, injected offline) of the worklist, study and
comparison pages.

One gateway (DICOM listener, a worker running the bundled model with heatmaps, SQLite)
receives two phantom chest studies of one patient over DICOM (DCMTK's storescu); a
third study, put on the worklist with only negative findings, opens without a heatmap.
Set ``OVERREAD_UI_SCREENSHOTS=DIR`` to save the study page as docs/ui.md shows it.
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
from sqlalchemy import select

from overread.harness import storescu
from overread.phantom import example_spec, render_study
from overread.web.ui.pages.viewer import BUNDLE, bundle_built

from .ui_support import (
    CHROMIUM_ARGS,
    PASSWORD,
    UiGateway,
    chromium_path,
    seed_study,
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
#: axe-core, installed with the viewer's npm dev dependencies (``npm ci``).
AXE = BUNDLE.parents[1] / "node_modules" / "axe-core" / "axe.min.js"
WIDTH, HEIGHT = 1600, 1000


def _study(folder: Path, name: str, study_date: str, findings: tuple[str, ...]) -> tuple[str, Path]:
    """A phantom chest (real anatomy) of the UI tests' patient, dated ``study_date``."""
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
def screen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UiGateway, SimpleNamespace]]:
    folder = tmp_path_factory.mktemp("screen")
    with ui_gateway(folder / "data", explain=True) as gw:
        s = SimpleNamespace()
        s.prior, prior_file = _study(folder, "prior", "20250115", ())
        s.current, current_file = _study(
            folder, "current", "20260115", ("Pneumothorax", "Pleural Effusion")
        )
        storescu(gw.service.dicom_port, [prior_file, current_file])
        for uid in (s.prior, s.current):
            wait_until(lambda uid=uid: worklist_has(gw, uid), 180, "the sent study on the worklist")
        s.negative = seed_study(gw, {"Pneumothorax": 0.05, "Edema": 0.1}, department="ED")
        yield gw, s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
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


def _login(page: Any, gw: UiGateway) -> None:
    page.goto(gw.base_url + "/login")
    page.fill("#username", "dr.grey")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()


def _open_study(page: Any, gw: UiGateway, uid: str, layers: bool = True) -> None:
    page.goto(f"{gw.base_url}/studies/{uid}")
    page.wait_for_selector("#viewer[data-ready=true]")
    if layers:
        page.wait_for_selector("#viewer[data-layers-ready=true]", timeout=120_000)


def _box(page: Any, selector: str) -> dict[str, float]:
    box: dict[str, float] = page.locator(selector).first.bounding_box()
    return box


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def _axe(page: Any) -> list[str]:
    """The serious and critical accessibility violations axe-core finds on the page."""
    page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => {
          const r = await axe.run(document, { resultTypes: ['violations'] });
          return r.violations.map(v => ({ id: v.id, impact: v.impact,
            nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5) }));
        }"""
    )
    return [
        f"{v['id']} ({v['impact']}): {', '.join(v['nodes'])}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name))


def test_study_page_heatmap_caption_layout_and_verdict_in_place(
    screen: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    from overread.triage import Feedback

    gw, s = screen
    _login(page, gw)
    _open_study(page, gw, s.current, layers=False)
    decisions = page.locator("#findings tbody tr[data-finding]").evaluate_all(
        "rows => rows.map(r => [r.dataset.finding, r.dataset.decision, r.classList.contains('shown')])"
    )
    flagged = [
        f for f, d, _ in decisions if d in ("positive", "indeterminate") and f != "No Finding"
    ]
    shown = [f for f, _, on in decisions if on]
    # The heatmap shown by default is a positive or indeterminate finding's, never a negative's.
    if flagged:
        assert len(shown) == 1 and shown[0] in flagged
        page.wait_for_selector("#viewer[data-layers-ready=true]", timeout=120_000)
        assert page.locator('input[data-layer="heatmap"]').is_checked()
        assert shown[0] in page.locator("#caption-finding").inner_text()
    else:
        assert shown == []
    _shot(page, "study-page.png")

    # Captions and the research notice lie outside the image, whole (not clipped).
    viewport = _box(page, "#viewport")
    for part in ("#viewer-caption", "#research-notice"):
        assert not _overlap(_box(page, part), viewport), part
        assert _box(page, part)["y"] >= viewport["y"] + viewport["height"]
    assert page.evaluate(
        "() => [...document.querySelectorAll('#viewer-caption p')]"
        ".every(p => p.scrollWidth <= p.clientWidth + 1)"
    )
    assert page.locator("#viewport").evaluate("v => v.innerText.trim()") == ""

    # The page fits 1600 px: no horizontal scroll, every verdict button on the screen.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= WIDTH
    rights = page.locator("form.verdicts button").evaluate_all(
        "bs => bs.map(b => b.getBoundingClientRect().right)"
    )
    assert rights and max(rights) <= WIDTH

    # Verdict buttons name their finding for screen readers.
    finding = decisions[0][0]
    agree = page.get_by_role("button", name=f"Agree with {finding}", exact=True)
    assert agree.count() == 1
    assert page.get_by_role("button", name=f"Disagree with {finding}", exact=True).count() == 1

    # A verdict updates the page in place: no reload, the header stays in view.
    page.evaluate("window.__sameDocument = true")
    scrolled = page.evaluate("() => window.scrollY")
    row = page.locator(f'#findings tr[data-finding="{finding}"]')
    row.locator('button[value="disagree"]').click()
    page.wait_for_function(
        "f => (document.getElementById('saved').textContent || '').includes(f + ': disagree')",
        arg=finding,
    )
    assert page.evaluate("window.__sameDocument === true")
    assert page.evaluate("() => window.scrollY") == scrolled
    assert page.locator("#patient-name").is_visible()
    # Scrolled down past the findings (priors, review), the patient header stays in view.
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    assert page.evaluate("() => window.scrollY") > 200
    head = _box(page, "#patient-head")
    assert head["y"] >= 0 and head["y"] + head["height"] <= HEIGHT / 4, head
    assert (
        page.evaluate(
            "() => { const r = document.getElementById('patient-name').getBoundingClientRect();"
            " return document.elementFromPoint(r.x + 2, r.y + r.height / 2)?.id; }"
        )
        == "patient-name"
    )  # on top, not covered by the viewer or a table
    assert "disagree" in row.locator(".verdict").inner_text()
    assert row.locator('button[value="disagree"]').get_attribute("aria-pressed") == "true"
    assert page.evaluate("() => document.activeElement.value") == "disagree"
    with gw.session() as session:
        votes = session.scalars(
            select(Feedback).where(
                Feedback.study_instance_uid == s.current, Feedback.finding == finding
            )
        ).all()
        assert [(v.reader, v.verdict) for v in votes] == [("dr.grey", "disagree")]
    # The viewer kept its state: still the same image, not reloaded.
    assert page.locator("#viewer").get_attribute("data-ready") == "true"
    assert page.problems == []


def test_no_console_error_nor_failed_request_on_any_page(
    screen: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    gw, s = screen
    _login(page, gw)
    for path in (
        "/",
        f"/studies/{s.current}",
        f"/studies/{s.current}/compare/{s.prior}",
        "/alerts",
    ):
        page.goto(gw.base_url + path, wait_until="networkidle")
        if path.startswith("/studies/") and "/compare/" not in path:
            page.wait_for_selector("#viewer[data-ready=true]")
        assert page.locator("h1").count() >= 1, path
    # The audit trail and the jobs page, as the administrator sees them.
    page.context.clear_cookies()
    page.goto(gw.base_url + "/login")
    page.fill("#username", "ada.admin")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()
    for path in ("/audit", "/admin/jobs"):
        response = page.goto(gw.base_url + path, wait_until="networkidle")
        assert response.status == 200, path
    assert page.problems == []


def test_a_study_without_positive_findings_opens_without_a_heatmap(
    screen: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    gw, s = screen
    _login(page, gw)
    page.goto(f"{gw.base_url}/studies/{s.negative}")
    assert page.locator("#findings tr.shown").count() == 0
    assert page.locator("#caption-none").is_visible()
    assert page.locator("#viewer").get_attribute("data-layers") == ""
    assert not page.locator('input[data-layer="heatmap"]').is_checked()
    # The picture as exported is the image alone (this seeded study has no stored image).
    assert page.locator("#heatmap").get_attribute("src").endswith("/image.png?plain=1")


def test_axe_finds_no_serious_violation_on_worklist_study_and_compare(
    screen: tuple[UiGateway, SimpleNamespace], browser: Any
) -> None:
    gw, s = screen
    if not AXE.is_file():
        pytest.skip("axe-core is not installed (npm ci in src/overread/web/viewer)")
    # The pages' policy forbids inline scripts; the test lifts it to inject axe-core.
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, bypass_csp=True)
    context.set_default_timeout(60_000)
    page = context.new_page()
    _login(page, gw)
    page.goto(gw.base_url + "/")
    found = _axe(page)
    assert found == [], "\n".join(found)
    _open_study(page, gw, s.current, layers=False)
    found = _axe(page)
    assert found == [], "\n".join(found)
    page.goto(f"{gw.base_url}/studies/{s.current}/compare/{s.prior}")
    page.wait_for_load_state()
    found = _axe(page)
    assert found == [], "\n".join(found)
    context.close()


def test_worklist_and_study_page_work_from_the_keyboard_alone(
    screen: tuple[UiGateway, SimpleNamespace], page: Any
) -> None:
    gw, s = screen
    _login(page, gw)
    page.goto(gw.base_url + "/")
    # The first Tab reaches the skip link, which moves focus to the main content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip-link"
    assert page.locator(".skip-link").is_visible()
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"

    # Tab walks forward through the filters to the first study link, focus visible.
    order: list[str] = []
    for _ in range(20):
        page.keyboard.press("Tab")
        info = page.evaluate(
            """() => { const e = document.activeElement;
              const style = getComputedStyle(e);
              return { tag: e.tagName, cls: e.className, inRows: !!e.closest('#worklist-rows'),
                       outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0,
                       y: e.getBoundingClientRect().top }; }"""
        )
        assert info["outline"], f"no visible focus on {info}"
        order.append(info["tag"])
        if info["inRows"]:
            break
    assert info["inRows"] and info["cls"] == "open", order

    # Arrow keys select rows; Enter opens the selected study.
    page.evaluate("() => document.activeElement.blur()")
    page.keyboard.press("ArrowDown")
    selected = page.locator("#worklist-rows tr.selected")
    assert selected.count() == 1
    target = selected.get_attribute("data-uid")
    assert page.evaluate("() => document.activeElement.dataset.uid") == target
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    assert page.locator("#worklist-rows tr.selected").get_attribute("data-uid") == target
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/studies/{target}")

    # On the study page: Tab reaches the verdict buttons; Space gives a verdict in place.
    _open_study(page, gw, s.current, layers=False)
    page.evaluate("window.__sameDocument = true")
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.matches('form.verdicts button')"):
            break
    button = page.evaluate(
        "() => [document.activeElement.value, document.activeElement.closest('tr').dataset.finding]"
    )
    assert button[0] == "agree"
    page.keyboard.press("Space")
    page.wait_for_function(
        "f => (document.getElementById('saved').textContent || '').includes(f + ': agree')",
        arg=button[1],
    )
    assert page.evaluate("window.__sameDocument === true")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == (
        f"Agree with {button[1]}"
    )
    # Keys: ? opens the help, Esc closes it without leaving the page.
    page.evaluate("() => document.activeElement.blur()")
    page.keyboard.press("?")
    assert page.locator("#keys").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#keys").is_visible()
    assert f"/studies/{s.current}" in page.url
