"""The release gate on phantom cohorts, through ``overread models ...`` and the library:
cohorts registered with their hashes, an inverted candidate refused, a faithful one
passing with operating points fitted on a registered cohort, a changed file refused;
then shadow, kill switch, rollback and the governance report from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent
from overread.db import Database
from overread.models.package import derive_package
from overread.models.registry import Registry
from overread.phantom.cohort import generate_cohort
from overread.service.release_gate import GateCriteria, release_gate

pytestmark = [pytest.mark.slow]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

ACTIVE = "cxr-default@1.5.3"


def _audit(database: Database, action: AuditAction) -> list[dict[str, Any]]:
    with database.session() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)).all()
        return [dict(r.details or {}) for r in rows]


def test_release_gate_cohorts_and_rollout_commands(
    tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, root = tmp_path / "data", tmp_path / "registry"
    monkeypatch.setenv("OVERREAD_DATA_DIR", str(data))
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(root))
    registry = Registry(root)
    bundled = registry.load(ACTIVE)
    # A faithful copy that also names a point of its own ("screening").
    own = {k: {**v, "screening": 0.123} for k, v in bundled.manifest.operating_points.items()}
    good = derive_package(
        bundled, tmp_path / "packages" / "good", version="1.5.4", operating_points=own
    )
    # Its calibration's slopes negated: every score ranks the other way round.
    calibration = bundled.manifest.calibration.model_dump(mode="python")
    calibration["parameters"] = {
        label: {"a": -p["a"], "b": p["b"]} for label, p in calibration["parameters"].items()
    }
    inverted = derive_package(
        bundled, tmp_path / "packages" / "inverted", version="1.5.6", calibration=calibration
    )
    for package in (good, inverted):
        assert run_cli("models", "import", package.path)[0] == 0
    # No test cohort yet: promotion is the plain alias switch, audited.
    status, out, err = run_cli("models", "alias", "chest", ACTIVE)
    assert status == 0, err
    assert out.strip() == f"chest -> {ACTIVE}"

    generate_cohort(tmp_path / "test", 60, seed=11, rows=256, cols=256, workers=1)
    generate_cohort(tmp_path / "fit", 60, seed=12, rows=256, cols=256, workers=1)
    status, out, err = run_cli("models", "cohorts", "add", "t1", tmp_path / "test")
    assert status == 0 and "registered cohort t1 (test): 60 images" in out, err
    status, out, err = run_cli(
        "models", "cohorts", "add", "fit", tmp_path / "fit", "--purpose", "operating-points"
    )
    assert status == 0, err
    status, _, err = run_cli("models", "cohorts", "add", "t1", tmp_path / "test")
    assert status != 0 and err.startswith("error: a cohort named 't1' is already registered")
    status, _, err = run_cli("models", "cohorts", "add", "x", tmp_path / "nothing")
    assert status != 0 and err.count("\n") == 1
    status, out, _ = run_cli("models", "cohorts", "list", "--json")
    listed = {c["name"]: c for c in json.loads(out)["cohorts"]}
    assert listed["t1"]["files"] == 61 and listed["fit"]["purpose"] == "operating-points"

    # The inverted candidate fails its AUCs and calibration; the alias stays.
    status, out, err = run_cli("models", "alias", "chest", "cxr-default@1.5.6", "--json")
    assert status == 1
    refused = json.loads(out.splitlines()[0])
    assert refused["promoted"] is False and refused["gate"]["passed"] is False
    failed = {c["check"] for c in refused["gate"]["checks"] if not c["passed"]}
    assert "auc non-inferior: Lung Opacity" in failed and "calibration" in failed
    assert registry.aliases()["chest"] == ACTIVE

    # The faithful copy: its operating points are fitted on the registered cohort
    # (a new version), and it is non-inferior, as calibrated and as fair.
    database = Database(f"sqlite:///{(data / 'overread.db').resolve()}")
    criteria = GateCriteria(max_time_ratio=100.0, critical_labels=())
    decision, judged = release_gate(
        registry, database, "cxr-default@1.5.4", ACTIVE, actor="tests", criteria=criteria
    )
    assert judged == "cxr-default@1.5.4+op.fit"
    assert decision.passed, [c for c in decision.checks if not c.passed]
    assert {c.check for c in decision.checks} >= {"calibration", "subgroup gaps", "speed"}
    fitted = registry.load(judged).manifest
    assert fitted.operating_points != own
    for label, points in fitted.operating_points.items():
        # Fitted points are ordered; the package's own point is kept as it was.
        assert points["high sensitivity"] <= points["balanced"] <= points["high specificity"]
        assert points["screening"] == 0.123, label
    assert fitted.training["operating_points_fitted_on"]["cohort"] == "fit"
    gates = _audit(database, AuditAction.RELEASE_GATE)
    assert [g["passed"] for g in gates] == [False, True]
    assert gates[1]["operating_points_fitted_on"] == "fit"

    # A cohort file changed since registration: the gate refuses to run.
    truth = tmp_path / "test" / "truth.csv"
    truth.write_text(truth.read_text() + "\n", encoding="utf-8")
    status, _, err = run_cli("models", "alias", "chest", "cxr-default@1.5.4")
    assert status != 0 and "changed since it was registered" in err
    assert registry.aliases()["chest"] == ACTIVE

    # Shadow, kill switch, rollback by command; each audited; then the report.
    status, out, err = run_cli("models", "alias", "chest", "cxr-default@1.5.4", "--shadow")
    assert status == 0 and out.strip() == (
        "chest: cxr-default@1.5.4 in shadow beside cxr-default@1.5.3"
    ), err
    status, out, _ = run_cli("models", "rollouts", "--json")
    [rollout] = json.loads(out)["rollouts"]
    assert (rollout["alias"], rollout["state"]) == ("chest", "shadow")
    assert run_cli("models", "kill", "cxr-default@1.5.4", "--reason", "recall")[0] == 0
    status, out, _ = run_cli("models", "kill", "cxr-default@1.5.4", "--release")
    assert status == 0 and "0 held export(s) queued" in out
    status, _, err = run_cli("models", "kill", "cxr-default@1.5.4", "--release")
    assert status != 0 and "no kill switch engaged" in err
    status, out, _ = run_cli("models", "rollback", "chest", "--reason", "not needed")
    assert status == 0 and out.strip() == f"chest -> {ACTIVE}"
    status, out, _ = run_cli("models", "compare", "chest", "--json")
    assert status == 0 and json.loads(out)["paired_studies"] == 0
    report = tmp_path / "governance.html"
    status, out, err = run_cli("models", "governance-report", "--out", report)
    assert status == 0, err
    assert "kill switch events 2" in out
    html = report.read_text(encoding="utf-8")
    assert "release gate of cxr-default@1.5.6" in html and "FAILED" in html
    assert "cxr-default@1.5.4 in shadow beside cxr-default@1.5.3" in html
    assert "rolled back cxr-default@1.5.4: not needed" in html
    assert "recall" in html and "<script" not in html
    # The period can leave everything out.
    status, out, _ = run_cli(
        "models", "governance-report", "--out", report, "--until", "2000-01-01"
    )
    assert status == 0 and "decisions 0" in out
    database.dispose()
