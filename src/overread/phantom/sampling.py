"""Cohort planning: patients, their studies over time, sites, and findings.

Everything random about a cohort is decided here, in one process, from one
seed; rendering only turns each plan into pixels. Findings co-occur the way
they do in chest X-ray populations:

* cardiomegaly, an enlarged mediastinum, lung lesions and pleural plaques are
  chronic: a patient who has one keeps it in most of their studies;
* edema is more likely with cardiomegaly, effusion with edema and cardiomegaly,
  atelectasis with effusion, consolidation with pneumonia, pneumothorax with rib
  fractures (and in ICU patients);
* support devices depend strongly on the referring department (ICU) and a
  pneumothorax brings a chest tube.

Each conditional probability is scaled so that the *marginal* prevalence stays
close to the configured one (``target * m / E[m]`` for a multiplier ``m``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS, Finding
from overread.phantom.anatomy import PatientAnatomy, Positioning, sample_anatomy, sample_positioning
from overread.phantom.render import OPACITY_CHILDREN
from overread.phantom.sites import DEPARTMENTS, Site
from overread.phantom.spec import FindingSpec

F = Finding

#: Default marginal prevalence per study: imbalanced, roughly CheXpert-like, but
#: with the rarest labels at >= 4% so that a few thousand studies can train on them.
DEFAULT_PREVALENCE: dict[str, float] = {
    F.ENLARGED_CARDIOMEDIASTINUM.value: 0.07,
    F.CARDIOMEGALY.value: 0.14,
    F.LUNG_OPACITY.value: 0.48,
    F.LUNG_LESION.value: 0.06,
    F.EDEMA.value: 0.18,
    F.CONSOLIDATION.value: 0.08,
    F.PNEUMONIA.value: 0.05,
    F.ATELECTASIS.value: 0.15,
    F.PNEUMOTHORAX.value: 0.08,
    F.PLEURAL_EFFUSION.value: 0.28,
    F.PLEURAL_OTHER.value: 0.04,
    F.FRACTURE.value: 0.05,
    F.SUPPORT_DEVICES.value: 0.35,
}

#: Demographic groups (the Group column and DICOM EthnicGroup) and their shares.
GROUPS: tuple[str, ...] = ("A", "B", "C", "D")
GROUP_WEIGHTS: tuple[float, ...] = (0.5, 0.22, 0.16, 0.12)

#: Studies per patient (1..4) and their probabilities.
STUDIES_PER_PATIENT: tuple[float, ...] = (0.45, 0.25, 0.18, 0.12)

_AP_BY_DEPARTMENT = {"ED": 0.45, "ICU": 0.95, "INPATIENT": 0.35, "OUTPATIENT": 0.05}
_DEVICES_BY_DEPARTMENT = {"ED": 0.5, "ICU": 2.6, "INPATIENT": 1.0, "OUTPATIENT": 0.15}
_CHRONIC = (
    F.CARDIOMEGALY.value,
    F.ENLARGED_CARDIOMEDIASTINUM.value,
    F.LUNG_LESION.value,
    F.PLEURAL_OTHER.value,
)
_PERSIST = 0.92


@dataclass(frozen=True)
class Patient:
    """A phantom patient: demographics, anatomy and chronic findings."""

    index: int
    patient_id: str
    sex: str
    birth_date: dt.date
    group: str
    anatomy: PatientAnatomy
    home_site: int
    chronic: tuple[FindingSpec, ...]


@dataclass(frozen=True)
class StudyPlan:
    """Everything decided about one study before rendering."""

    index: int
    patient: Patient
    study_number: int
    date: dt.date
    time: str
    age: int
    site: Site
    department: str
    positioning: Positioning
    findings: tuple[FindingSpec, ...]
    monochrome1: bool
    path: str


def parse_date(text: str, what: str) -> dt.date:
    """Parse ``YYYY-MM-DD`` or ``YYYYMMDD``; raise a clear ConfigError otherwise."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ConfigError(f"{what}: {text!r} is not a date (use YYYY-MM-DD)")


def validate_prevalence(prevalence: Mapping[str, float]) -> dict[str, float]:
    """Defaults overridden by ``prevalence``; unknown labels or bad values raise."""
    out = dict(DEFAULT_PREVALENCE)
    for label, value in prevalence.items():
        if label not in out:
            raise ConfigError(
                f"prevalence: unknown label {label!r} (expected one of {', '.join(out)})"
            )
        if not 0.0 <= value <= 0.95:
            raise ConfigError(f"prevalence: {label} = {value} is outside 0..0.95")
        out[label] = float(value)
    return out


def severity(rng: np.random.Generator) -> float:
    """A severity in 0.15..1, most cases clearly visible (median about 0.7)."""
    return float(0.15 + 0.85 * rng.beta(2.2, 1.4))


def _scaled(target: float, factors: list[tuple[bool, float, float]]) -> float:
    """``target`` times each multiplier, normalised by its expectation.

    ``factors`` holds (condition present, multiplier, prevalence of condition).
    """
    p = target
    for present, m, prev in factors:
        p *= (m if present else 1.0) / (prev * m + (1.0 - prev))
    return float(min(p, 0.97))


class CohortSampler:
    """Plans a cohort from a seed.

    Parameters
    ----------
    seed
        Master seed.
    sites
        The sites studies come from.
    prevalence
        Marginal prevalence per label (see :data:`DEFAULT_PREVALENCE`).
    start, end
        Date range of the studies.
    drift_site, drift_date
        Site code whose acquisition changes on ``drift_date`` (inclusive).
    ap_fraction
        Scales the portable AP share.
    """

    def __init__(
        self,
        seed: int,
        sites: tuple[Site, ...],
        prevalence: Mapping[str, float] | None = None,
        start: dt.date = dt.date(2024, 1, 1),
        end: dt.date = dt.date(2025, 12, 31),
        drift_site: str | None = None,
        drift_date: dt.date | None = None,
        monochrome1_fraction: float | None = None,
        severity_scale: float = 1.0,
    ) -> None:
        if not sites:
            raise ConfigError("at least one site is needed")
        if end <= start:
            raise ConfigError(f"end date {end} is not after start date {start}")
        codes = [s.code for s in sites]
        if drift_site is not None and drift_site not in codes:
            raise ConfigError(f"drift site {drift_site!r} is not one of {', '.join(codes)}")
        if drift_site is not None and drift_date is None:
            raise ConfigError("a drift site needs a drift date (--drift-date)")
        if drift_date is not None and not start < drift_date <= end:
            raise ConfigError(f"drift date {drift_date} is outside the study dates {start}..{end}")
        if not 0.2 <= severity_scale <= 1.0:
            raise ConfigError(f"severity scale {severity_scale} is outside 0.2..1")
        if monochrome1_fraction is not None and not 0 <= monochrome1_fraction <= 1:
            raise ConfigError(f"MONOCHROME1 fraction {monochrome1_fraction} is outside 0..1")
        self.seed = seed
        self.sites = sites
        self.prevalence = validate_prevalence(prevalence or {})
        self.start = start
        self.end = end
        self.drift_site = drift_site
        self.drift_date = drift_date
        self.monochrome1_fraction = monochrome1_fraction
        self.severity_scale = severity_scale
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x50484E54]))
        mix = np.mean([s.departments for s in sites], axis=0)
        self._device_norm = float(
            sum(m * mix[i] for i, m in enumerate(_DEVICES_BY_DEPARTMENT.values()))
        )

    def _severity(self) -> float:
        """A severity from :func:`severity`, scaled down for harder cohorts."""
        return max(0.05, severity(self.rng) * self.severity_scale)

    # -- patients -----------------------------------------------------------------
    def _patient(self, index: int, first_date: dt.date) -> tuple[Patient, int]:
        rng = self.rng
        sex = "M" if rng.random() < 0.5 else "F"
        age = int(np.clip(rng.normal(62, 17), 18, 95))
        group = str(rng.choice(GROUPS, p=GROUP_WEIGHTS))
        anatomy = sample_anatomy(rng, sex, age)
        if group == "D":  # a habitus difference between groups, for fairness analyses
            anatomy = PatientAnatomy(
                **{**anatomy.__dict__, "body_thickness": anatomy.body_thickness + 0.1}
            )
        birth = first_date - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
        chronic: list[FindingSpec] = []
        for label in _CHRONIC:
            p = self.prevalence[label] / _PERSIST
            if label == F.CARDIOMEGALY.value:
                p *= 0.4 + 1.2 * (age / 95)
            if rng.random() < min(p, 0.97):
                chronic.append(
                    FindingSpec(
                        label,
                        self._severity(),
                        int(rng.integers(0, 2**31 - 1)),
                        side=int(rng.choice([-1, 1])),
                        kinds=(),
                    )
                )
        patient = Patient(
            index=index,
            patient_id=f"patient{index:05d}",
            sex=sex,
            birth_date=birth,
            group=group,
            anatomy=anatomy,
            home_site=int(rng.integers(0, len(self.sites))),
            chronic=tuple(chronic),
        )
        return patient, age

    # -- findings ----------------------------------------------------------------
    def _acute(self, patient: Patient, department: str) -> list[FindingSpec]:
        rng = self.rng
        prev = self.prevalence

        def seed() -> int:
            return int(rng.integers(0, 2**31 - 1))

        present = {f.label for f in patient.chronic}
        findings: list[FindingSpec] = []
        for f in patient.chronic:
            if rng.random() < _PERSIST:
                s = float(np.clip(f.severity + rng.normal(0, 0.04), 0.05, 1.0))
                findings.append(FindingSpec(f.label, s, f.seed, f.side, f.kinds))
        present = {f.label for f in findings}
        cardio = F.CARDIOMEGALY.value in present
        icu = department == "ICU"

        def add(label: str, p: float, side: int = 0, kinds: tuple[str, ...] = ()) -> bool:
            if rng.random() < p:
                findings.append(FindingSpec(label, self._severity(), seed(), side, kinds))
                return True
            return False

        edema = add(
            F.EDEMA.value, _scaled(prev[F.EDEMA.value], [(cardio, 2.5, prev[F.CARDIOMEGALY.value])])
        )
        effusion = add(
            F.PLEURAL_EFFUSION.value,
            _scaled(
                prev[F.PLEURAL_EFFUSION.value],
                [(edema, 2.0, prev[F.EDEMA.value]), (cardio, 1.4, prev[F.CARDIOMEGALY.value])],
            ),
        )
        pneumonia = add(
            F.PNEUMONIA.value,
            prev[F.PNEUMONIA.value],
            side=int(rng.choice([-1, 1])),
            kinds=(str(rng.choice(["upper", "lower"], p=[0.35, 0.65])),),
        )
        add(
            F.CONSOLIDATION.value,
            _scaled(prev[F.CONSOLIDATION.value], [(pneumonia, 4.0, prev[F.PNEUMONIA.value])]),
        )
        add(
            F.ATELECTASIS.value,
            _scaled(prev[F.ATELECTASIS.value], [(effusion, 1.6, prev[F.PLEURAL_EFFUSION.value])]),
            side=int(rng.choice([-1, 1])),
        )
        side = int(rng.choice([-1, 1]))
        fracture = add(F.FRACTURE.value, prev[F.FRACTURE.value], side=side)
        icu_share = float(np.mean([s.departments[1] for s in self.sites]))
        ptx = add(
            F.PNEUMOTHORAX.value,
            _scaled(
                prev[F.PNEUMOTHORAX.value],
                [(fracture, 4.0, prev[F.FRACTURE.value]), (icu, 1.5, icu_share)],
            ),
            side=side,
        )
        implied = 1.0
        for label in OPACITY_CHILDREN:
            implied *= 1.0 - prev[label]
        standalone = max(0.0, (prev[F.LUNG_OPACITY.value] - (1.0 - implied)) / implied)
        add(F.LUNG_OPACITY.value, standalone)
        m_dept = _DEVICES_BY_DEPARTMENT[department] / self._device_norm
        p_dev = min(0.97, prev[F.SUPPORT_DEVICES.value] * m_dept)
        p_dev = _scaled(p_dev, [(ptx, 2.5, prev[F.PNEUMOTHORAX.value])])
        if rng.random() < p_dev:
            kinds = self._device_kinds(department, ptx, cardio)
            s = min(1.0, 0.3 + 0.2 * len(kinds))
            findings.append(FindingSpec(F.SUPPORT_DEVICES.value, s, seed(), side, kinds))
        return findings

    def _device_kinds(self, department: str, ptx: bool, cardio: bool) -> tuple[str, ...]:
        rng = self.rng
        if department == "ICU":
            odds = {"et_tube": 0.7, "ng_tube": 0.6, "central_line": 0.7, "ecg_leads": 0.5}
        else:
            odds = {"central_line": 0.45, "ecg_leads": 0.4, "ng_tube": 0.1}
        odds["pacemaker"] = 0.45 if cardio else 0.15
        odds["chest_tube"] = 0.75 if ptx else 0.02
        kinds = tuple(k for k, p in odds.items() if rng.random() < p)
        if not kinds:
            kinds = ("chest_tube",) if ptx else (str(rng.choice(["central_line", "pacemaker"])),)
        return kinds

    # -- cohort ------------------------------------------------------------------
    def plan(self, n: int) -> list[StudyPlan]:
        """Plan ``n`` studies (patients with 1-4 studies each, the last one truncated)."""
        if n < 1:
            raise ConfigError(f"number of studies must be at least 1, got {n}")
        rng = self.rng
        plans: list[StudyPlan] = []
        total_days = (self.end - self.start).days
        patient_index = 0
        while len(plans) < n:
            patient_index += 1
            k = int(rng.choice(len(STUDIES_PER_PATIENT), p=STUDIES_PER_PATIENT)) + 1
            k = min(k, n - len(plans))
            gaps = [int(g) for g in rng.integers(2, 150, size=k - 1)]
            span = sum(gaps)
            first = self.start + dt.timedelta(days=int(rng.integers(0, max(1, total_days - span))))
            patient, age0 = self._patient(patient_index, first)
            date = first
            for number in range(1, k + 1):
                if number > 1:
                    date = date + dt.timedelta(days=gaps[number - 2])
                site_index = patient.home_site
                if rng.random() < 0.15:
                    site_index = int(rng.integers(0, len(self.sites)))
                site = self.sites[site_index]
                if self.drift_site == site.code and self.drift_date and date >= self.drift_date:
                    site = site.after_drift()
                department = str(
                    rng.choice(DEPARTMENTS, p=np.asarray(site.departments) / sum(site.departments))
                )
                view = "AP" if rng.random() < _AP_BY_DEPARTMENT[department] else "PA"
                positioning = sample_positioning(rng, view)
                findings = tuple(self._acute(patient, department))
                mono1_p = (
                    self.monochrome1_fraction
                    if self.monochrome1_fraction is not None
                    else site.monochrome1_fraction
                )
                seconds = int(rng.integers(6 * 3600, 23 * 3600))
                plans.append(
                    StudyPlan(
                        index=len(plans),
                        patient=patient,
                        study_number=number,
                        date=date,
                        time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
                        age=age0 + int((date - first).days / 365.25),
                        site=site,
                        department=department,
                        positioning=positioning,
                        findings=findings,
                        monochrome1=bool(rng.random() < mono1_p),
                        path=f"images/{patient.patient_id}/study{number}/view1_frontal.dcm",
                    )
                )
        return plans


__all__ = [
    "CHEXPERT_LABELS",
    "DEFAULT_PREVALENCE",
    "GROUPS",
    "CohortSampler",
    "Patient",
    "StudyPlan",
    "parse_date",
    "severity",
    "validate_prevalence",
]
