"""How fast the reading screens are ready in a real browser (``overread bench worklist``).

A gateway (SQLite, one worker running the bundled model) is started in a temporary
folder with ``studies`` studies on its worklist (scored findings, no images) and one
study sent through the ingest path and read by the model (a phantom chest with an
image, so the study page has something to show). Chromium (the system's, headless,
driven by Playwright) signs in once and then loads each page ``repeats`` times, each
a fresh navigation. Times are the browser's own, from the navigation's start:

* worklist: first contentful paint, and ``DOMContentLoaded`` (the rows are in the
  HTML, so the data is rendered when the document is parsed); ready = the later one;
* study page: first contentful paint, ``DOMContentLoaded``, and the viewer's first
  image on screen (its ``overread:image-shown`` mark: metadata and the full frame
  fetched over WADO-RS, decoded and drawn); ready = the image shown. The AI layers
  (computed by the model on first request, cached after) are reported apart.

The first load of each page is reported on its own (cold: templates, the bundle, the
first model run for the layers) and the rest as median and worst.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from overread.errors import ConfigError

#: What the browser reports for one navigation, in milliseconds from its start.
TIMINGS_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const mark = (name) => { const m = performance.getEntriesByName(name)[0]; return m ? m.startTime : null; };
  const done = (part) => { const r = performance.getEntriesByType('resource').find((e) => e.name.includes(part));
                          return r ? r.responseEnd : null; };
  return { fcp: paint ? paint.startTime : null, dcl: nav.domContentLoadedEventEnd,
           html: nav.responseEnd, bundle: done('/viewer/overread-viewer.js'),
           metadata: done('/metadata'), frame: done('/frames/1'),
           load: nav.loadEventEnd, image: mark('overread:image-shown'),
           layers: mark('overread:layers-shown'),
           rows: document.querySelectorAll('#worklist-rows tr[data-uid]').length };
}"""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The target: each page ready in under this many milliseconds.
TARGET_MS = 1000.0


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise ConfigError("bench worklist: Chromium not found (install the chromium package)")
    return found


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"first": None, "median": None, "worst": None}
    rest = values[1:] or values
    return {"first": values[0], "median": statistics.median(rest), "worst": max(rest)}


def _seed(gateway: Any, studies: int) -> None:
    """``studies`` scored studies on the worklist, with spread priorities and waits."""
    import numpy as np
    from pydicom.uid import generate_uid

    from overread.results import FindingResult
    from overread.service.db import utcnow
    from overread.triage import StudyContext, TriageConfig, upsert_study

    config = TriageConfig.model_validate(gateway.config.triage)
    rng = np.random.default_rng(0)
    labels = ("Pneumothorax", "Pleural Effusion", "Edema", "Cardiomegaly", "Consolidation")
    now = utcnow()
    with gateway.database.session() as session:
        for _ in range(studies):
            values = rng.random(len(labels))
            found = [
                FindingResult(label, float(p), bool(p > 0.5), float(1 - abs(p - 0.5) * 2), 0.5)
                for label, p in zip(labels, values, strict=True)
            ]
            upsert_study(
                session,
                generate_uid(),
                found,
                StudyContext("ED", 60, now - timedelta(minutes=int(rng.integers(0, 600)))),
                config,
                now=now,
                model_name="seeded",
                model_version="0",
            )


def benchmark_screen(
    *,
    studies: int = 1000,
    repeats: int = 10,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Worklist and study page readiness in Chromium with ``studies`` on the worklist.

    Returns
    -------
    dict
        ``studies``, ``repeats``, ``rows_shown``, ``target_ms``, ``console_errors``,
        ``worklist`` and ``study`` (per timing: ``first``, ``median`` and ``worst`` in
        ms), ``worklist_ready_ms`` and ``study_ready_ms`` (the medians), ``cpu_count``
        and ``load_average``.
    """
    if studies < 1 or repeats < 2:
        raise ConfigError("bench worklist: --studies must be >= 1 and --repeats >= 2")
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ConfigError("bench worklist: Playwright for Python is not installed") from None
    from pydicom.uid import generate_uid

    from overread.config import Settings
    from overread.harness import write_chest_dx
    from overread.harness.gateway import QUICK_TIMINGS, loopback_config, running_gateway
    from overread.security import add_user
    from overread.service.http import HttpServer
    from overread.triage import get_item
    from overread.web.app import create_app
    from overread.web.ui.pages.viewer import bundle_built

    if not bundle_built():
        raise ConfigError(
            "bench worklist: the viewer is not built "
            "(cd src/overread/web/viewer && npm ci && npm run build)"
        )
    say = progress or (lambda _task: None)
    password = secrets.token_urlsafe(16)
    errors: list[str] = []
    timings: dict[str, list[dict[str, Any]]] = {"worklist": [], "study": []}
    with tempfile.TemporaryDirectory(prefix="overread-bench-screen-") as folder:
        config = loopback_config(Settings(data_dir=Path(folder) / "data"), **QUICK_TIMINGS)
        with running_gateway(config, stop_timeout=10, with_http=False) as service:
            say(f"putting {studies} studies on the worklist")
            _seed(service, studies)
            with service.database.session() as session:
                add_user(session, "bench.reader", "radiologist", password=password, actor="bench")
            say("reading one study with the model")
            uid = generate_uid()
            dx = write_chest_dx(Path(folder) / "one.dcm", study_uid=uid, size=1024)
            service.ingestor.ingest_file(dx)
            service.complete_study(uid)
            _wait_for(lambda: _on_worklist(service, uid, get_item), 180)
            app = create_app(service)
            server = HttpServer(app, "127.0.0.1", 0)
            base = f"http://127.0.0.1:{server.start()}"
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                    context = browser.new_context(viewport={"width": 1600, "height": 1000})
                    context.set_default_timeout(120_000)
                    page = context.new_page()
                    page.on(
                        "console",
                        lambda m: errors.append(m.text) if m.type == "error" else None,
                    )
                    page.goto(base + "/login")
                    page.fill("#username", "bench.reader")
                    page.fill("#password", password)
                    page.click("#login")
                    page.wait_for_load_state()
                    say("loading the worklist")
                    for _ in range(repeats):
                        page.goto(base + "/", wait_until="load")
                        page.wait_for_selector("#worklist-rows tr[data-uid]")
                        timings["worklist"].append(page.evaluate(TIMINGS_JS))
                    say("loading the study page")
                    for _ in range(repeats):
                        page.goto(f"{base}/studies/{uid}", wait_until="load")
                        page.wait_for_selector("#viewer[data-ready=true]")
                        page.wait_for_selector("#viewer[data-layers-ready=true]")
                        timings["study"].append(page.evaluate(TIMINGS_JS))
                    browser.close()
            finally:
                server.stop()

    def column(page_name: str, key: str) -> list[float]:
        return [float(t[key]) for t in timings[page_name] if t.get(key) is not None]

    worklist_ready = [max(float(t["fcp"] or 0.0), float(t["dcl"])) for t in timings["worklist"]]
    study_ready = [float(t["image"]) for t in timings["study"] if t.get("image") is not None]
    result: dict[str, Any] = {
        "studies": studies,
        "repeats": repeats,
        "rows_shown": int(timings["worklist"][-1]["rows"]) if timings["worklist"] else 0,
        "target_ms": TARGET_MS,
        "console_errors": errors,
        "worklist": {
            "HTML received": _summary(column("worklist", "html")),
            "first contentful paint": _summary(column("worklist", "fcp")),
            "DOMContentLoaded (rows rendered)": _summary(column("worklist", "dcl")),
            "ready": _summary(worklist_ready),
        },
        "study": {
            "first contentful paint": _summary(column("study", "fcp")),
            "HTML received": _summary(column("study", "html")),
            "viewer script received": _summary(column("study", "bundle")),
            "DOMContentLoaded (script run)": _summary(column("study", "dcl")),
            "image metadata received (WADO-RS)": _summary(column("study", "metadata")),
            "full-resolution frame received": _summary(column("study", "frame")),
            "ready (image shown)": _summary(study_ready),
            "AI layers shown": _summary(column("study", "layers")),
        },
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
    }
    result["worklist_ready_ms"] = result["worklist"]["ready"]["median"]
    result["study_ready_ms"] = result["study"]["ready (image shown)"]["median"]
    return result


def _on_worklist(service: Any, uid: str, get_item: Callable[..., Any]) -> bool:
    with service.database.session() as session:
        try:
            get_item(session, uid)
        except KeyError:
            return False
    return True


def _wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise ConfigError(f"bench worklist: the model did not read the study within {seconds:.0f} s")


__all__ = ["TARGET_MS", "benchmark_screen"]
