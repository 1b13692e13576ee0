"""Ready-made study specs for tests, previews and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS, Finding
from overread.phantom.anatomy import sample_anatomy, sample_positioning
from overread.phantom.devices import DEVICE_KINDS
from overread.phantom.sites import DEFAULT_SITES
from overread.phantom.spec import FindingSpec, StudySpec


def example_spec(
    seed: int = 0,
    findings: Sequence[str] = (),
    severity: float = 0.7,
    size: int = 256,
    site: int = 0,
    view: str = "PA",
    sex: str = "M",
    monochrome1: bool = False,
) -> StudySpec:
    """One patient's study with the named findings (CheXpert label names).

    The anatomy depends only on ``seed``, so ``example_spec(s, ())`` and
    ``example_spec(s, ("Edema",))`` show the same patient with and without edema.
    """
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, sex, 60)
    positioning = sample_positioning(rng, view)
    specs = []
    for i, label in enumerate(findings):
        if label not in CHEXPERT_LABELS or label == Finding.NO_FINDING.value:
            raise ConfigError(f"example_spec: {label!r} is not a renderable CheXpert finding")
        kinds: tuple[str, ...] = ()
        if label == Finding.SUPPORT_DEVICES.value:
            kinds = tuple(k for k in DEVICE_KINDS if k != "chest_tube")
        specs.append(FindingSpec(label, severity, seed * 1000 + 17 * (i + 1), side=1, kinds=kinds))
    return StudySpec(
        anatomy=anatomy,
        positioning=positioning,
        findings=tuple(specs),
        acquisition=DEFAULT_SITES[site].acquisition,
        rows=size,
        cols=size,
        internal=min(256, size),
        monochrome1=monochrome1,
    )
