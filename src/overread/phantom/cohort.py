"""Generate a phantom cohort on disk: DICOM files, labels, truth and masks.

Layout (the contract other areas read)::

    DIR/images/patientNNNNN/studyK/view1_frontal.dcm
    DIR/masks/patientNNNNN/studyK/<label>.png      (0/255, stored-image size)
    DIR/masks/patientNNNNN/studyK/lung_field.png   (0/255: the visible lung fields)
    DIR/labels.csv         CheXpert-style report labels (uncertain, noisy, blanks)
    DIR/truth.csv          exact 0/1 truth
    DIR/ground_truth.json  boxes, severities, mask paths per image
    DIR/cohort.json        generation parameters and counts

Planning happens in the parent process; rendering and writing are spread over
worker processes. Each study's noise comes from ``SeedSequence([seed, 1,
index])``, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from overread import __version__
from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS
from overread.phantom.dicom import StudyHeader, StudyUids, cohort_uids, write_dicom
from overread.phantom.labeller import check_rates, report_labels
from overread.phantom.render import render_study
from overread.phantom.sampling import CohortSampler, StudyPlan
from overread.phantom.sites import DEFAULT_SITES, Site
from overread.phantom.spec import StudySpec

logger = logging.getLogger(__name__)

#: Key columns after the labels in labels.csv (and first in truth.csv).
KEY_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "Site",
    "Station",
    "Manufacturer",
    "Department",
    "Group",
)
#: labels.csv columns, CheXpert's first.
LABELS_COLUMNS: tuple[str, ...] = (
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    *CHEXPERT_LABELS,
    *KEY_COLUMNS,
)
#: truth.csv columns.
TRUTH_COLUMNS: tuple[str, ...] = (
    "Path",
    *KEY_COLUMNS,
    "Sex",
    "Age",
    *CHEXPERT_LABELS,
    "AP/PA",
    "CTR",
    "Drifted",
)

#: File name of each study's lung-field mask (beside its finding masks).
LUNG_FIELD_MASK = "lung_field.png"

MAX_SIZE = 3000
MIN_SIZE = 64


@dataclass(frozen=True)
class CohortOptions:
    """Parameters of a cohort; recorded in cohort.json."""

    n: int
    seed: int = 0
    rows: int = 1024
    cols: int = 1024
    internal: int = 256
    sites: int = 4
    modality: str = "DX"  # DX, CR, or "mixed" (each site's own)
    monochrome1_fraction: float | None = None  # None: each site's own
    uncertain_rate: float = 0.1
    label_noise: float = 0.01
    prevalence: Mapping[str, float] = field(default_factory=dict)
    drift_site: str | None = None
    drift_date: str | None = None
    start_date: str = "2024-01-01"
    end_date: str = "2025-12-31"
    workers: int = 2
    field_of_view_mm: float = 430.0
    severity_scale: float = 1.0  # < 1: smaller, fainter findings (harder cohorts)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option."""
        if self.n < 1:
            raise ConfigError(f"--n must be at least 1, got {self.n}")
        for name, value in (("rows", self.rows), ("cols", self.cols)):
            if not MIN_SIZE <= value <= MAX_SIZE:
                raise ConfigError(f"image {name} {value} is outside {MIN_SIZE}..{MAX_SIZE}")
        if not 32 <= self.internal <= 1024:
            raise ConfigError(f"internal resolution {self.internal} is outside 32..1024")
        if not 1 <= self.sites <= len(DEFAULT_SITES):
            raise ConfigError(f"--sites {self.sites} is outside 1..{len(DEFAULT_SITES)}")
        if self.modality not in ("DX", "CR", "mixed"):
            raise ConfigError(f"--modality {self.modality!r} is not DX, CR or mixed")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        check_rates(self.uncertain_rate, self.label_noise)


@dataclass
class CohortSummary:
    """What :func:`generate_cohort` made."""

    out_dir: Path
    studies: int
    patients: int
    seconds: float
    per_site: dict[str, int]
    truth_prevalence: dict[str, float]
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def studies_per_minute(self) -> float:
        """Generation rate."""
        return 60.0 * self.studies / self.seconds if self.seconds > 0 else 0.0


def _sites(options: CohortOptions) -> tuple[Site, ...]:
    sites = DEFAULT_SITES[: options.sites]
    if options.modality == "mixed":
        return sites
    detector = "STORAGE" if options.modality == "CR" else None
    return tuple(
        replace(
            s,
            modality=options.modality,
            detector_type=detector or ("SCINTILLATOR" if s.modality == "CR" else s.detector_type),
        )
        for s in sites
    )


def plan_cohort(options: CohortOptions) -> list[StudyPlan]:
    """Validate ``options`` and plan every study (no rendering)."""
    options.validate()
    from overread.phantom.sampling import parse_date

    sampler = CohortSampler(
        seed=options.seed,
        sites=_sites(options),
        prevalence=options.prevalence,
        start=parse_date(options.start_date, "start date"),
        end=parse_date(options.end_date, "end date"),
        drift_site=options.drift_site,
        drift_date=parse_date(options.drift_date, "--drift-date") if options.drift_date else None,
        monochrome1_fraction=options.monochrome1_fraction,
        severity_scale=options.severity_scale,
    )
    return sampler.plan(options.n)


def study_spec(plan: StudyPlan, options: CohortOptions) -> StudySpec:
    """The render spec of a planned study."""
    return StudySpec(
        anatomy=plan.patient.anatomy,
        positioning=plan.positioning,
        findings=plan.findings,
        acquisition=plan.site.acquisition,
        rows=options.rows,
        cols=options.cols,
        internal=options.internal,
        monochrome1=plan.monochrome1,
    )


def _slug(label: str) -> str:
    return label.lower().replace(" ", "_")


def plan_header(
    plan: StudyPlan,
    *,
    view: str,
    uids: StudyUids,
    accession: str,
    window: tuple[float, float],
    pixel_spacing_mm: float,
) -> StudyHeader:
    """The DICOM header facts of a planned study: its patient, site and dates, with the
    projection's ``view``, UIDs, accession, VOI ``window`` (centre, width) and spacing."""
    return StudyHeader(
        patient_id=plan.patient.patient_id,
        patient_name=f"PHANTOM^{plan.patient.patient_id.upper()}",
        sex=plan.patient.sex,
        age=plan.age,
        birth_date=plan.patient.birth_date,
        group=plan.patient.group,
        study_date=plan.date,
        study_time=plan.time,
        accession=accession,
        department=plan.department,
        view=view,
        site=plan.site,
        uids=uids,
        study_number=plan.study_number,
        monochrome1=plan.monochrome1,
        window_center=window[0],
        window_width=window[1],
        pixel_spacing_mm=pixel_spacing_mm,
    )


def _render_one(job: tuple[StudyPlan, CohortOptions, str]) -> dict[str, Any]:
    """Worker: render one study, write its DICOM and masks, return its record."""
    plan, options, out = job
    out_dir = Path(out)
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, 1, plan.index]))
    pixels, truth = render_study(study_spec(plan, options), rng)
    uids = cohort_uids(options.seed, plan.index)
    accession = f"{plan.site.code}{plan.date:%y}{plan.index + 1:07d}"
    header = plan_header(
        plan,
        view=plan.positioning.view,
        uids=uids,
        accession=accession,
        window=(truth.window_center, truth.window_width),
        pixel_spacing_mm=options.field_of_view_mm / options.rows,
    )
    write_dicom(out_dir / plan.path, header, pixels)
    findings = []
    mask_dir = Path("masks") / plan.patient.patient_id / f"study{plan.study_number}"
    (out_dir / mask_dir).mkdir(parents=True, exist_ok=True)
    lung_field = mask_dir / LUNG_FIELD_MASK
    Image.fromarray(truth.lungs.astype(np.uint8) * 255, mode="L").save(
        out_dir / lung_field, compress_level=1
    )
    for ft in truth.findings:
        mask_path = mask_dir / f"{_slug(ft.label)}.png"
        Image.fromarray(ft.mask.astype(np.uint8) * 255, mode="L").save(
            out_dir / mask_path, compress_level=1
        )
        findings.append(
            {
                "label": ft.label,
                "bbox": list(ft.bbox),
                "severity": ft.severity,
                "mask": mask_path.as_posix(),
                "attributes": ft.attributes,
            }
        )
    return {
        "index": plan.index,
        "path": plan.path,
        "uids": asdict(uids),
        "accession": accession,
        "labels": truth.labels,
        "ctr": truth.ctr,
        "lung_field": lung_field.as_posix(),
        "findings": findings,
        "window": [truth.window_center, truth.window_width],
    }


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _write_outputs(
    out_dir: Path, plans: list[StudyPlan], records: list[dict[str, Any]], options: CohortOptions
) -> None:
    labels_rows = []
    truth_rows = []
    images = []
    for plan, rec in zip(plans, records, strict=True):
        keys = {
            "PatientID": plan.patient.patient_id,
            "StudyInstanceUID": rec["uids"]["study"],
            "SeriesInstanceUID": rec["uids"]["series"],
            "SOPInstanceUID": rec["uids"]["sop"],
            "StudyDate": f"{plan.date:%Y%m%d}",
            "AccessionNumber": rec["accession"],
            "Site": plan.site.code,
            "Station": plan.site.station,
            "Manufacturer": plan.site.manufacturer,
            "Department": plan.department,
            "Group": plan.patient.group,
        }
        sex = "Male" if plan.patient.sex == "M" else "Female"
        rng = np.random.default_rng(np.random.SeedSequence([options.seed, 2, plan.index]))
        reported = report_labels(rec["labels"], rng, options.uncertain_rate, options.label_noise)
        labels_rows.append(
            {
                "Path": plan.path,
                "Sex": sex,
                "Age": str(plan.age),
                "Frontal/Lateral": "Frontal",
                "AP/PA": plan.positioning.view,
                **{k: _fmt(v) for k, v in reported.items()},
                **keys,
            }
        )
        truth_rows.append(
            {
                "Path": plan.path,
                **keys,
                "Sex": sex,
                "Age": str(plan.age),
                **{k: str(v) for k, v in rec["labels"].items()},
                "AP/PA": plan.positioning.view,
                "CTR": f"{rec['ctr']:.4f}",
                "Drifted": "1" if plan.site.drifted else "0",
            }
        )
        images.append(
            {
                "path": plan.path,
                "sop_instance_uid": rec["uids"]["sop"],
                "patient_id": plan.patient.patient_id,
                "ctr": rec["ctr"],
                "lung_field": rec["lung_field"],
                "findings": rec["findings"],
            }
        )
    for name, columns, rows in (
        ("labels.csv", LABELS_COLUMNS, labels_rows),
        ("truth.csv", TRUTH_COLUMNS, truth_rows),
    ):
        with (out_dir / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    ground_truth = {"version": 1, "seed": options.seed, "images": images}
    (out_dir / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1) + "\n")


def generate_cohort(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> CohortSummary:
    """Generate ``n`` phantom studies under ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder (created; existing cohort files are overwritten).
    n, seed
        Number of studies and master seed; the same seed gives byte-identical
        pixel data, CSVs and JSON.
    progress
        Called as ``progress(done, total)`` after each study.
    **kwargs
        Any other :class:`CohortOptions` field (``rows``, ``cols``, ``sites``,
        ``uncertain_rate``, ``label_noise``, ``drift_site``, ``drift_date``,
        ``workers``, ...).

    Returns
    -------
    CohortSummary
    """
    try:
        options = CohortOptions(n=n, seed=seed, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"generate_cohort: {exc}") from None
    return write_cohort(out_dir, options, progress=progress)


def write_cohort(
    out_dir: str | Path,
    options: CohortOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    plans: list[StudyPlan] | None = None,
    on_study: Callable[[dict[str, Any]], None] | None = None,
) -> CohortSummary:
    """Render and write the cohort described by ``options`` (see :func:`generate_cohort`).

    ``plans`` may be given when the caller already planned (and so validated) them.
    ``on_study`` is called with each study's record (``index``, ``path``, ``uids``,
    ...) once its files are on disk, in plan order, so a consumer can use the first
    studies while the rest are still being rendered; the CSVs and ``cohort.json``
    (written last) follow the final study.
    """
    if plans is None:
        plans = plan_cohort(options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [(plan, options, str(out)) for plan in plans]
    records: list[dict[str, Any]] = []

    def _done(record: dict[str, Any]) -> None:
        records.append(record)
        if on_study:
            on_study(record)
        if progress:
            progress(len(records), len(jobs))

    if options.workers == 1 or len(jobs) < 4:
        for job in jobs:
            _done(_render_one(job))
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(options.workers) as pool:
            for record in pool.imap(_render_one, jobs, chunksize=4):
                _done(record)
    _write_outputs(out, plans, records, options)
    seconds = time.perf_counter() - started
    per_site: dict[str, int] = {}
    for plan in plans:
        per_site[plan.site.code] = per_site.get(plan.site.code, 0) + 1
    prevalence = {
        label: round(float(np.mean([r["labels"][label] for r in records])), 4)
        for label in CHEXPERT_LABELS
    }
    summary = CohortSummary(
        out_dir=out,
        studies=len(plans),
        patients=len({p.patient.patient_id for p in plans}),
        seconds=seconds,
        per_site=per_site,
        truth_prevalence=prevalence,
        records=records,
    )
    cohort = {
        "version": 1,
        "generator": f"overread {__version__} phantom cxr",
        "parameters": {**asdict(options), "prevalence": dict(options.prevalence)},
        "counts": {
            "studies": summary.studies,
            "patients": summary.patients,
            "per_site": per_site,
            "drifted_studies": sum(p.site.drifted for p in plans),
            "monochrome1": sum(p.monochrome1 for p in plans),
            "ap": sum(p.positioning.view == "AP" for p in plans),
        },
        "truth_prevalence": prevalence,
        "sites": [
            {
                "code": s.code,
                "institution": s.institution,
                "station": s.station,
                "manufacturer": s.manufacturer,
                "model": s.model,
                "modality": s.modality,
                "acquisition": asdict(s.acquisition),
                "drifted_acquisition": asdict(s.after_drift().acquisition)
                if s.code == options.drift_site
                else None,
            }
            for s in _sites(options)
        ],
    }
    (out / "cohort.json").write_text(json.dumps(cohort, indent=1, sort_keys=True) + "\n")
    logger.info("phantom cohort: %d studies in %.1f s", summary.studies, seconds)
    return summary
