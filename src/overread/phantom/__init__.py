"""Synthetic chest X-ray cohorts in real DICOM, with exact ground truth.

No labelled chest radiographs can be shipped with the project, yet training,
evaluation, explainability, monitoring and the service all need studies whose
truth is known. The phantom renders chest radiographs from a simple physical
model (attenuation of soft tissue, lungs, heart, bones), adds the 14 CheXpert
findings with exact masks and boxes, simulates several sites' detectors (and
their drift), and writes DX/CR DICOM with CheXpert-style labels.

Typical use::

    from overread.phantom import generate_cohort
    summary = generate_cohort("cohort", n=200, seed=1, rows=256, cols=256)

or in memory::

    spec, rng = example_spec(seed=0, findings=("Pneumothorax",)), np.random.default_rng(0)
    pixels, truth = render_study(spec, rng)
"""

from __future__ import annotations

from overread.phantom.acquisition import AcquisitionProfile
from overread.phantom.anatomy import PatientAnatomy, Positioning, sample_anatomy, sample_positioning
from overread.phantom.cohort import (
    LABELS_COLUMNS,
    TRUTH_COLUMNS,
    CohortOptions,
    CohortSummary,
    generate_cohort,
    plan_cohort,
    study_spec,
    write_cohort,
)
from overread.phantom.examples import example_spec
from overread.phantom.labeller import report_labels
from overread.phantom.render import render_study, truth_labels
from overread.phantom.sampling import DEFAULT_PREVALENCE, CohortSampler, StudyPlan
from overread.phantom.sites import DEFAULT_SITES, Site
from overread.phantom.spec import FindingSpec, FindingTruth, StudySpec, StudyTruth

__all__ = [
    "DEFAULT_PREVALENCE",
    "DEFAULT_SITES",
    "LABELS_COLUMNS",
    "TRUTH_COLUMNS",
    "AcquisitionProfile",
    "CohortOptions",
    "CohortSampler",
    "CohortSummary",
    "FindingSpec",
    "FindingTruth",
    "PatientAnatomy",
    "Positioning",
    "Site",
    "StudyPlan",
    "StudySpec",
    "StudyTruth",
    "example_spec",
    "generate_cohort",
    "plan_cohort",
    "render_study",
    "report_labels",
    "sample_anatomy",
    "sample_positioning",
    "study_spec",
    "truth_labels",
    "write_cohort",
]
