"""Report labels: uncertainty and noise rates, blanks, prevalence of the plan."""

from __future__ import annotations

import numpy as np
import pytest

from overread.findings import CHEXPERT_LABELS
from overread.phantom import DEFAULT_PREVALENCE, CohortOptions, plan_cohort, report_labels
from overread.phantom.render import truth_labels

PATHOLOGY = [lab for lab in CHEXPERT_LABELS if lab != "No Finding"]


@pytest.mark.parametrize(("uncertain", "noise"), [(0.1, 0.0), (0.25, 0.05)])
def test_uncertain_and_noise_rates_match_configuration(uncertain: float, noise: float) -> None:
    rng = np.random.default_rng(0)
    truth_rng = np.random.default_rng(1)
    pos_total = pos_uncertain = pos_missed = neg_total = neg_flipped = neg_blank = 0
    for _ in range(4000):
        truth = {lab: int(truth_rng.random() < 0.3) for lab in CHEXPERT_LABELS}
        reported = report_labels(truth, rng, uncertain, noise)
        for lab in PATHOLOGY:
            value = reported[lab]
            if truth[lab]:
                pos_total += 1
                pos_uncertain += value == -1.0
                pos_missed += value in (0.0, None)
            else:
                neg_total += 1
                neg_flipped += value == 1.0
                neg_blank += value is None
    assert pos_uncertain / pos_total == pytest.approx(uncertain, abs=0.015)
    assert pos_missed / pos_total == pytest.approx(noise, abs=0.01)
    assert neg_flipped / neg_total == pytest.approx(noise, abs=0.01)
    assert neg_blank / neg_total > 0.6  # most negatives are not mentioned, as in CheXpert


def test_no_finding_follows_the_reported_labels() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        truth = truth_labels(())
        truth["Support Devices"] = 1
        reported = report_labels(truth, rng, 0.2, 0.05)
        others = [reported[lab] for lab in PATHOLOGY if lab != "Support Devices"]
        assert (reported["No Finding"] == 1.0) == all(v not in (1.0, -1.0) for v in others)


def test_plan_prevalence_is_close_to_configured() -> None:
    plans = plan_cohort(CohortOptions(n=4000, seed=7, prevalence={"Edema": 0.25}))
    labels = [truth_labels(p.findings) for p in plans]
    target = {**DEFAULT_PREVALENCE, "Edema": 0.25}
    for lab, want in target.items():
        got = float(np.mean([t[lab] for t in labels]))
        assert got == pytest.approx(want, abs=max(0.02, 0.25 * want)), lab


def test_co_occurrence_is_realistic() -> None:
    plans = plan_cohort(CohortOptions(n=4000, seed=8))
    labels = [truth_labels(p.findings) for p in plans]
    edema = np.array([t["Edema"] for t in labels], dtype=bool)
    cardio = np.array([t["Cardiomegaly"] for t in labels], dtype=bool)
    devices = np.array([t["Support Devices"] for t in labels], dtype=bool)
    icu = np.array([p.department == "ICU" for p in plans])
    assert edema[cardio].mean() > 1.5 * edema[~cardio].mean()
    assert devices[icu].mean() > 2 * devices[~icu].mean()


def test_severity_scale_makes_findings_fainter_with_the_same_labels() -> None:
    default = plan_cohort(CohortOptions(n=300, seed=9))
    harder = plan_cohort(CohortOptions(n=300, seed=9, severity_scale=0.5))
    assert [truth_labels(p.findings) for p in default] == [truth_labels(p.findings) for p in harder]
    pairs = [
        (a.severity, b.severity)
        for pa, pb in zip(default, harder, strict=True)
        for a, b in zip(pa.findings, pb.findings, strict=True)
        if a.label != "Support Devices"
    ]
    assert pairs
    ratio = np.mean([b for _, b in pairs]) / np.mean([a for a, _ in pairs])
    assert ratio == pytest.approx(0.5, abs=0.05)
    assert all(b <= a + 1e-9 for a, b in pairs)
