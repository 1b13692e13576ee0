"""A reduced phantom replay: every injected drift is found after injection, the
drift-free run raises nothing. Runs the bundled model on a few hundred phantom images."""

from __future__ import annotations

import pytest

from overread.monitoring.simulate import SimulationOptions, save_plots, simulate


@pytest.mark.slow
def test_reduced_simulation_detects_every_drift(tmp_path) -> None:
    # A pool of 600 studies: with 400, the 1,800 draws repeat each study 4.5 times and the
    # drift-free run raised a fairness alert for cxr-default 1.5.2 (Support Devices, group C
    # against A, -0.47) that 1,000 fresh phantoms do not show (group C 0.886, A 0.862).
    options = SimulationOptions(seed=0, days=45, studies_per_day=40, inject_day=25, pool_size=600)
    report = simulate(options)
    assert report.false_alarms_no_drift == 0, [a.message for _, _, a in report.clean.alerts]
    assert len(report.detections) == 4
    for d in report.detections:
        assert d.detected_at_study is not None, f"{d.kind} missed"
        assert d.detected_at_study > d.injected_at_study
        assert d.false_alarms_before == 0
    document = report.as_dict()
    assert set(document["detections"][0]) >= {"kind", "injected_at_study", "detected_at_study"}
    paths = save_plots(report, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)
