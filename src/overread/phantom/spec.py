"""What to render (specs) and what was rendered (truth).

A :class:`StudySpec` holds everything that determines an image except the
noise: the patient's anatomy, the positioning, the findings (each with its own
seed, so removing one finding leaves the others exactly where they were) and
the acquisition profile. Rendering the same spec with the same generator gives
the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.phantom.acquisition import AcquisitionProfile
from overread.phantom.anatomy import PatientAnatomy, Positioning


@dataclass(frozen=True)
class FindingSpec:
    """One finding to render.

    Parameters
    ----------
    label
        A CheXpert label (``overread.findings.Finding`` value).
    severity
        0..1; drives size and density. Most cases are clearly visible (>= 0.4).
    seed
        Seeds this finding's geometry.
    side
        -1 patient right, +1 patient left, 0 bilateral or not lateralised.
    kinds
        Subtypes, e.g. ``("et_tube", "central_line")`` for support devices or
        ``("mass",)`` for a lung lesion.
    """

    label: str
    severity: float
    seed: int
    side: int = 0
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudySpec:
    """Everything that determines one rendered radiograph except its noise."""

    anatomy: PatientAnatomy
    positioning: Positioning
    findings: tuple[FindingSpec, ...]
    acquisition: AcquisitionProfile
    rows: int = 1024
    cols: int = 1024
    internal: int = 256
    monochrome1: bool = False

    def without(self, label: str) -> StudySpec:
        """The same study with every finding called ``label`` removed."""
        kept = tuple(f for f in self.findings if f.label != label)
        return StudySpec(
            anatomy=self.anatomy,
            positioning=self.positioning,
            findings=kept,
            acquisition=self.acquisition,
            rows=self.rows,
            cols=self.cols,
            internal=self.internal,
            monochrome1=self.monochrome1,
        )


@dataclass
class FindingTruth:
    """Exact ground truth of one rendered finding, in stored-image pixels."""

    label: str
    severity: float
    mask: npt.NDArray[np.bool_]
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (column, row), inclusive
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyTruth:
    """Ground truth of one rendered radiograph."""

    labels: dict[str, int]
    findings: list[FindingTruth]
    ctr: float
    lungs: npt.NDArray[np.bool_]
    window_center: float
    window_width: float
    bits_stored: int
