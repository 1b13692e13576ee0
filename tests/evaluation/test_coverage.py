"""Coverage of the AUC intervals on simulated data with a known true AUC.

Binormal scores with separation d have AUC = Phi(d / sqrt(2)). Patients
contribute two correlated images, so only the patient-level intervals should
keep their 95% coverage.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from overread.evaluation import bootstrap_auc, clustered_delong_ci, delong_ci


def _clustered_sample(rng: np.random.Generator, n_patients: int, d: float):
    y_patient = (rng.random(n_patients) < 0.4).astype(float)
    shared = rng.normal(size=n_patients)  # patient effect: images of one patient are alike
    y = np.repeat(y_patient, 2)
    noise = np.sqrt(0.5) * rng.normal(size=2 * n_patients)
    s = np.sqrt(0.5) * np.repeat(shared, 2) + noise + d * y
    return y, s, np.repeat(np.arange(n_patients), 2)


@pytest.mark.slow
def test_patient_level_intervals_keep_nominal_coverage() -> None:
    d = 1.0
    true_auc = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(2024)
    hits_boot = hits_delong = hits_naive = 0
    runs = 200
    for _ in range(runs):
        y, s, patients = _clustered_sample(rng, 150, d)
        boot = bootstrap_auc(y, s, patients, n_resamples=400, seed=int(rng.integers(1 << 31)))
        hits_boot += boot.ci_low[0] <= true_auc <= boot.ci_high[0]
        est = clustered_delong_ci(y, s, patients)
        hits_delong += est.ci[0] <= true_auc <= est.ci[1]
        naive = delong_ci(y, s)  # ignores that a patient's two images are alike
        hits_naive += naive.ci[0] <= true_auc <= naive.ci[1]
    # 95% nominal; with 200 runs the binomial SD is 1.5 points, so 90% is a 3-SD floor.
    assert hits_boot / runs >= 0.90
    assert hits_delong / runs >= 0.90
    assert hits_naive < hits_delong  # image-level intervals are too narrow here
