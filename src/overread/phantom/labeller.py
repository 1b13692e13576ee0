"""Report-derived labels: what a CheXpert-style labeller would extract.

Real training labels come from free-text reports run through a rule-based
labeller, so they are not the truth: hedged findings become *uncertain* (-1),
some findings are missed or invented (label noise), and most negatives are
simply not mentioned (blank) while a few are stated ("no pneumothorax", 0).
This module turns exact truth into such labels so that label policies
(U-Ones, U-Zeros, ...) can be studied against known truth.

Rules, per pathology label (all but No Finding):

* truth positive: missed (reported negative) with probability ``label_noise``,
  else uncertain with probability ``uncertain_rate``, else 1;
* truth negative: reported positive with probability ``label_noise``, else
  uncertain with probability ``uncertain_rate / 10`` (hedging about absent
  disease), else an explicit 0 with a label-specific mention probability, else
  blank;
* No Finding is 1 when no other label except Support Devices is 1 or -1, and
  blank otherwise, as in CheXpert.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS, Finding

#: Probability that a negative is stated explicitly (0.0) rather than left blank.
MENTION_NEGATIVE: dict[str, float] = {
    Finding.ENLARGED_CARDIOMEDIASTINUM.value: 0.1,
    Finding.CARDIOMEGALY.value: 0.15,
    Finding.LUNG_OPACITY.value: 0.05,
    Finding.LUNG_LESION.value: 0.03,
    Finding.EDEMA.value: 0.2,
    Finding.CONSOLIDATION.value: 0.25,
    Finding.PNEUMONIA.value: 0.08,
    Finding.ATELECTASIS.value: 0.03,
    Finding.PNEUMOTHORAX.value: 0.4,
    Finding.PLEURAL_EFFUSION.value: 0.35,
    Finding.PLEURAL_OTHER.value: 0.02,
    Finding.FRACTURE.value: 0.05,
    Finding.SUPPORT_DEVICES.value: 0.03,
}


def check_rates(uncertain_rate: float, label_noise: float) -> None:
    """Raise a ConfigError when a rate is outside what makes sense."""
    if not 0.0 <= uncertain_rate <= 0.9:
        raise ConfigError(f"uncertain rate {uncertain_rate} is outside 0..0.9")
    if not 0.0 <= label_noise <= 0.5:
        raise ConfigError(f"label noise {label_noise} is outside 0..0.5")


def report_labels(
    truth: Mapping[str, int],
    rng: np.random.Generator,
    uncertain_rate: float,
    label_noise: float,
) -> dict[str, float | None]:
    """CheXpert-style labels (1.0, 0.0, -1.0 or None for blank) from exact truth."""
    out: dict[str, float | None] = {}
    for label in CHEXPERT_LABELS:
        if label == Finding.NO_FINDING.value:
            continue
        u = rng.random()
        mention = rng.random()
        if truth[label]:
            if u < label_noise:
                value: float | None = 0.0 if mention < MENTION_NEGATIVE[label] else None
            elif u < label_noise + uncertain_rate:
                value = -1.0
            else:
                value = 1.0
        elif u < label_noise:
            value = 1.0
        elif u < label_noise + uncertain_rate / 10:
            value = -1.0
        else:
            value = 0.0 if mention < MENTION_NEGATIVE[label] else None
        out[label] = value
    pathology = [
        v for k, v in out.items() if k != Finding.SUPPORT_DEVICES.value and v in (1.0, -1.0)
    ]
    out[Finding.NO_FINDING.value] = None if pathology else 1.0
    return {label: out[label] for label in CHEXPERT_LABELS}
