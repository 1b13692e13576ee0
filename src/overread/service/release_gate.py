"""The release gate: a candidate version is promoted only after passing the
registered labelled cohorts against the active version.

Cohorts are phantom-style folders (``truth.csv`` with a ``Path`` column, the label
columns, and ``Sex``/``Site`` for subgroups) registered with
``overread models cohorts add NAME DIR``; the registration stores the SHA-256 of
``truth.csv`` and of every image it lists, and the gate verifies every hash before
it reads a cohort (a changed or missing file refuses the gate, naming the file).

A cohort is registered for one purpose:

* ``test``: both versions run on it and the candidate must pass every check;
* ``operating-points``: the candidate's operating points are fitted on it (Youden
  for ``balanced``, sensitivity 0.9 for ``high sensitivity``, specificity 0.9 for
  ``high specificity``, with :func:`overread.evaluation.operating_points.choose_threshold`)
  and written into a new package version ``<version>+op.<cohort>`` — what is then
  judged and promoted. Without such a cohort, a candidate whose operating points are
  the active version's own (copied) fails the gate.

The checks, per test cohort (:class:`GateCriteria` holds the margins):

* **AUC non-inferiority** per label: the lower bound of the 95% DeLong interval of
  AUC(candidate) - AUC(active) above ``-auc_margin``;
* **calibration**: the candidate's mean expected calibration error over the labels
  at most ``calibration_margin`` above the active's;
* **subgroup gaps**: the candidate's mean (over labels) largest AUC gap between the
  ``Sex`` and ``Site`` subgroups at most ``subgroup_gap_margin`` above the active's;
* **critical false negatives**: on the critical findings (triage's), no more
  missed positives at the operating point than the active version;
* **speed**: seconds per image at most ``max_time_ratio`` times the active's.

The decision and its evidence (every figure) are audited (``release-gate``).
"""

from __future__ import annotations

import csv
import enum
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from overread.audit import AuditAction, record_event
from overread.db import Base, Database, utcnow
from overread.errors import ConfigError, ModelPackageError

if TYPE_CHECKING:
    from overread.models.package import ModelPackage
    from overread.models.registry import Registry
    from overread.service.rollout import ModelRollouts


class CohortPurpose(enum.StrEnum):
    """What a registered cohort is used for at promotion."""

    TEST = "test"
    OPERATING_POINTS = "operating-points"


class RegisteredCohort(Base):
    """A labelled cohort registered for the release gate, with its files' hashes."""

    __tablename__ = "model_cohorts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    images: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(128), default="")
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Cohort:
    """A registered cohort as read from the database."""

    name: str
    path: Path
    purpose: CohortPurpose
    files: dict[str, str]
    images: int
    added_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``overread models cohorts list --json``."""
        return {
            "name": self.name,
            "path": str(self.path),
            "purpose": self.purpose.value,
            "images": self.images,
            "files": len(self.files),
            "digest": self.digest,
            "added_at": self.added_at.isoformat(),
        }

    @property
    def digest(self) -> str:
        """One SHA-256 over every file's name and hash (names the cohort's content)."""
        text = "\n".join(f"{k} {v}" for k, v in sorted(self.files.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    def image_paths(self) -> list[str]:
        """The images, in ``truth.csv`` order (relative paths)."""
        with (self.path / "truth.csv").open(newline="", encoding="utf-8") as handle:
            return [row["Path"] for row in csv.DictReader(handle) if row.get("Path")]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cohort_files(folder: Path) -> list[str]:
    truth = folder / "truth.csv"
    if not truth.is_file():
        raise ConfigError(f"{folder}: no truth.csv; a cohort is a labelled phantom-style folder")
    with truth.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "Path" not in (reader.fieldnames or []):
            raise ConfigError(f"{truth}: no Path column")
        paths = [row["Path"] for row in reader if row.get("Path")]
    if not paths:
        raise ConfigError(f"{truth}: lists no images")
    missing = [p for p in paths if not (folder / p).is_file()]
    if missing:
        raise ConfigError(f"{folder}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    return ["truth.csv", *paths]


def _cohort(row: RegisteredCohort) -> Cohort:
    return Cohort(
        name=row.name,
        path=Path(row.path),
        purpose=CohortPurpose(row.purpose),
        files={str(k): str(v) for k, v in (row.files or {}).items()},
        images=row.images,
        added_at=row.added_at,
    )


class CohortRegistry:
    """Registered cohorts in the gateway's database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self, name: str, folder: Path, *, purpose: CohortPurpose, actor: str, role: str = ""
    ) -> Cohort:
        """Register ``folder`` (hashing every file it uses) under ``name``; audited.

        Raises
        ------
        ConfigError
            If the name is taken, or the folder is not a labelled cohort.
        """
        if not name or len(name) > 64 or "/" in name:
            raise ConfigError(f"invalid cohort name {name!r}")
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such folder")
        names = _cohort_files(folder)
        files = {rel: _sha256(folder / rel) for rel in names}
        with self.database.session() as session:
            if session.get(RegisteredCohort, name) is not None:
                raise ConfigError(f"a cohort named {name!r} is already registered")
            row = RegisteredCohort(
                name=name,
                path=str(folder),
                purpose=purpose.value,
                files=files,
                images=len(names) - 1,
                actor=actor,
                added_at=utcnow(),
            )
            session.add(row)
            session.flush()
            cohort = _cohort(row)
            record_event(
                session,
                actor=actor,
                role=role,
                action=AuditAction.COHORT_REGISTERED,
                object_uids=[name],
                details=cohort.to_dict(),
            )
        return cohort

    def list(self, purpose: CohortPurpose | None = None) -> list[Cohort]:
        """Registered cohorts (of one purpose), by name."""
        with self.database.session() as session:
            query = select(RegisteredCohort).order_by(RegisteredCohort.name)
            if purpose is not None:
                query = query.where(RegisteredCohort.purpose == purpose.value)
            return [_cohort(r) for r in session.scalars(query).all()]


def verify_cohort(cohort: Cohort) -> None:
    """Check every registered hash of ``cohort``.

    Raises
    ------
    ConfigError
        Naming the first file that is missing or changed since registration.
    """
    for rel, expected in sorted(cohort.files.items()):
        path = cohort.path / rel
        if not path.is_file():
            raise ConfigError(f"cohort {cohort.name}: {path} is missing since it was registered")
        if _sha256(path) != expected:
            raise ConfigError(f"cohort {cohort.name}: {path} changed since it was registered")


# -- running the models -----------------------------------------------------------
@dataclass
class CohortReading:
    """One version's outputs on a cohort: probabilities, calls and seconds per image."""

    labels: list[str]
    probabilities: np.ndarray  # (N, L)
    positive: np.ndarray  # (N, L) bool
    seconds_per_image: float


def read_cohort(package: ModelPackage, cohort: Cohort, registry: Registry) -> CohortReading:
    """Run ``package`` on every image of ``cohort`` (as served: its thresholds)."""
    from overread.inference import Pipeline

    pipeline = Pipeline(package, registry=registry)
    paths = [str(cohort.path / p) for p in cohort.image_paths()]
    started = time.perf_counter()
    predictions = pipeline.predict(paths, batch_size=16)
    seconds = (time.perf_counter() - started) / max(1, len(paths))
    labels = list(pipeline.labels)
    probabilities = np.full((len(paths), len(labels)), np.nan)
    positive = np.zeros((len(paths), len(labels)), dtype=bool)
    for i, prediction in enumerate(predictions):
        if not prediction.ok:
            continue
        for j, label in enumerate(labels):
            finding = prediction.finding(label)
            probabilities[i, j] = finding.probability
            positive[i, j] = finding.positive
    return CohortReading(labels, probabilities, positive, seconds)


def _truth(cohort: Cohort, labels: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """0/1 truth ``(N, L)`` (NaN where unlabelled or uncertain) and subgroup columns."""
    with (cohort.path / "truth.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("Path")]
    truth = np.full((len(rows), len(labels)), np.nan)
    for i, row in enumerate(rows):
        for j, label in enumerate(labels):
            value = (row.get(label) or "").strip()
            if value in ("0", "1", "0.0", "1.0"):
                truth[i, j] = float(value)
    groups = {
        column: np.array([row.get(column, "") for row in rows])
        for column in ("Sex", "Site")
        if rows and column in rows[0]
    }
    return truth, groups


def fit_operating_points(
    package: ModelPackage, cohort: Cohort, registry: Registry
) -> dict[str, dict[str, float]]:
    """The package's operating points fitted on ``cohort``.

    The three named points of each label are chosen by
    :func:`~overread.evaluation.operating_points.standard_points` (ordered); any
    other point the package names keeps its own threshold (on the same
    probabilities). Labels the cohort lacks two of each class for keep the
    package's own points, ordered the same way."""
    from overread.evaluation.operating_points import order_points, standard_points

    verify_cohort(cohort)
    reading = read_cohort(package, cohort, registry)
    truth, _ = _truth(cohort, reading.labels)
    fitted = {k: order_points(v) for k, v in package.manifest.operating_points.items()}
    for j, label in enumerate(reading.labels):
        keep = ~np.isnan(truth[:, j]) & ~np.isnan(reading.probabilities[:, j])
        y, p = truth[keep, j], reading.probabilities[keep, j]
        if y.sum() < 2 or (1 - y).sum() < 2:
            continue
        fitted[label] = {**fitted.get(label, {}), **standard_points(y, p)}
    return fitted


def write_fitted_package(package: ModelPackage, cohort: Cohort, registry: Registry) -> ModelPackage:
    """A new version of ``package`` with operating points fitted on ``cohort``,
    imported into ``registry`` (``<version>+op.<cohort>``; reused when it exists)."""
    import tempfile

    from overread.models.package import derive_package

    version = f"{package.version}+op.{cohort.name}"
    try:
        return registry.load(f"{package.name}@{version}")
    except ModelPackageError:
        pass
    points = fit_operating_points(package, cohort, registry)
    training = dict(package.manifest.training)
    training["operating_points_fitted_on"] = {
        "cohort": cohort.name,
        "digest": cohort.digest,
        "images": cohort.images,
        "from_version": package.version,
    }
    with tempfile.TemporaryDirectory(prefix=".fit-", dir=registry.root) as scratch:
        derived = derive_package(
            package,
            Path(scratch) / "package",
            version=version,
            key=registry.key,
            operating_points=points,
            training=training,
        )
        registry.import_package(derived.path)
    return registry.load(f"{package.name}@{version}")


# -- the gate -------------------------------------------------------------------------
@dataclass(frozen=True)
class GateCriteria:
    """Margins of the release gate (see the module)."""

    auc_margin: float = 0.02
    calibration_margin: float = 0.02
    subgroup_gap_margin: float = 0.05
    max_time_ratio: float = 2.0
    critical_labels: tuple[str, ...] | None = None
    """Labels whose false negatives must not increase (default: triage's critical findings)."""
    min_class_count: int = 5
    """Positives and negatives a label needs in a cohort to have its AUC judged."""


@dataclass(frozen=True)
class GateCheck:
    """One check on one cohort: passed or not, and its figures."""

    cohort: str
    check: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """The release gate's decision on a candidate."""

    candidate: str
    active: str
    passed: bool
    checks: tuple[GateCheck, ...]
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The evidence: every check with its figures (audited, printed by ``--json``)."""
        return {
            "candidate": self.candidate,
            "active": self.active,
            "passed": self.passed,
            "problems": list(self.problems),
            "checks": [asdict(c) for c in self.checks],
        }


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from overread.evaluation.delong import delong_ci

    if y.sum() < 1 or (1 - y).sum() < 1:
        return None
    return float(delong_ci(y, p).auc)


def _largest_gap(y: np.ndarray, p: np.ndarray, groups: np.ndarray, least: int) -> float | None:
    aucs = []
    for group in sorted(set(groups.tolist())):
        mask = groups == group
        if y[mask].sum() >= least and (1 - y[mask]).sum() >= least:
            value = _auc(y[mask], p[mask])
            if value is not None:
                aucs.append(value)
    return max(aucs) - min(aucs) if len(aucs) >= 2 else None


def _r(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)


def judge_cohort(
    name: str,
    truth: np.ndarray,
    groups: dict[str, np.ndarray],
    active: CohortReading,
    candidate: CohortReading,
    criteria: GateCriteria,
    critical: Sequence[str],
) -> list[GateCheck]:
    """The gate's checks of ``candidate`` against ``active`` on one cohort."""
    from overread.evaluation.calibration import calibration_error
    from overread.evaluation.delong import delong_test

    checks: list[GateCheck] = []
    ece_a: list[float] = []
    ece_c: list[float] = []
    gap_a: list[float] = []
    gap_c: list[float] = []
    fn_a = fn_c = 0
    per_label_fn: dict[str, list[int]] = {}
    for j, label in enumerate(candidate.labels):
        if label not in active.labels:
            continue
        k = active.labels.index(label)
        keep = (
            ~np.isnan(truth[:, j])
            & ~np.isnan(active.probabilities[:, k])
            & ~np.isnan(candidate.probabilities[:, j])
        )
        y = truth[keep, j]
        pa, pc = active.probabilities[keep, k], candidate.probabilities[keep, j]
        if label in critical:
            missed_a = int(((y == 1) & ~active.positive[keep, k]).sum())
            missed_c = int(((y == 1) & ~candidate.positive[keep, j]).sum())
            fn_a += missed_a
            fn_c += missed_c
            per_label_fn[label] = [missed_a, missed_c]
        if y.sum() < criteria.min_class_count or (1 - y).sum() < criteria.min_class_count:
            continue
        comparison = delong_test(y, pc, pa)
        checks.append(
            GateCheck(
                name,
                f"auc non-inferior: {label}",
                comparison.ci[0] > -criteria.auc_margin,
                {
                    "auc_candidate": _r(comparison.auc_a),
                    "auc_active": _r(comparison.auc_b),
                    "difference": _r(comparison.difference),
                    "ci": [_r(comparison.ci[0]), _r(comparison.ci[1])],
                    "margin": criteria.auc_margin,
                    "positives": int(y.sum()),
                    "negatives": int((1 - y).sum()),
                },
            )
        )
        ece_a.append(calibration_error(y, pa).ece)
        ece_c.append(calibration_error(y, pc).ece)
        for column in groups.values():
            least = max(2, criteria.min_class_count // 2)
            a_gap = _largest_gap(y, pa, column[keep], least)
            c_gap = _largest_gap(y, pc, column[keep], least)
            if a_gap is not None and c_gap is not None:
                gap_a.append(a_gap)
                gap_c.append(c_gap)
    if ece_a:
        mean_a, mean_c = float(np.mean(ece_a)), float(np.mean(ece_c))
        checks.append(
            GateCheck(
                name,
                "calibration",
                mean_c <= mean_a + criteria.calibration_margin,
                {"ece_candidate": _r(mean_c), "ece_active": _r(mean_a), "labels": len(ece_a)},
            )
        )
    if gap_a:
        mean_a, mean_c = float(np.mean(gap_a)), float(np.mean(gap_c))
        checks.append(
            GateCheck(
                name,
                "subgroup gaps",
                mean_c <= mean_a + criteria.subgroup_gap_margin,
                {
                    "gap_candidate": _r(mean_c),
                    "gap_active": _r(mean_a),
                    "comparisons": len(gap_a),
                    "groups": sorted(groups),
                },
            )
        )
    checks.append(
        GateCheck(
            name,
            "critical false negatives",
            fn_c <= fn_a,
            {"candidate": fn_c, "active": fn_a, "per_label": per_label_fn},
        )
    )
    ratio = candidate.seconds_per_image / max(active.seconds_per_image, 1e-9)
    checks.append(
        GateCheck(
            name,
            "speed",
            ratio <= criteria.max_time_ratio,
            {
                "seconds_per_image_candidate": _r(candidate.seconds_per_image),
                "seconds_per_image_active": _r(active.seconds_per_image),
                "ratio": _r(ratio),
                "max_ratio": criteria.max_time_ratio,
            },
        )
    )
    return checks


def _critical_labels(criteria: GateCriteria) -> tuple[str, ...]:
    if criteria.critical_labels is not None:
        return criteria.critical_labels
    from overread.triage import TriageConfig

    return tuple(TriageConfig().alerts.critical)


def release_gate(
    registry: Registry,
    database: Database,
    candidate: str,
    active: str,
    *,
    actor: str,
    role: str = "",
    criteria: GateCriteria | None = None,
) -> tuple[GateDecision, str]:
    """Judge ``candidate`` against ``active`` on every registered test cohort.

    The candidate's operating points are first fitted on the registered
    operating-points cohort (the newest registered), giving the version judged and
    returned (``name@version``). The decision is audited with its evidence.

    Raises
    ------
    ConfigError
        If no test cohort is registered, or a cohort's files changed since registration.
    """
    criteria = criteria or GateCriteria()
    cohorts = CohortRegistry(database)
    tests = cohorts.list(CohortPurpose.TEST)
    if not tests:
        raise ConfigError(
            "no test cohort registered: overread models cohorts add NAME DIR --purpose test"
        )
    for cohort in tests:
        verify_cohort(cohort)
    candidate_package = registry.load(candidate)
    active_package = registry.load(active)
    problems: list[str] = []
    fitting = cohorts.list(CohortPurpose.OPERATING_POINTS)
    fitted_on: str | None = None
    if fitting:
        cohort = max(fitting, key=lambda c: c.added_at)
        candidate_package = write_fitted_package(candidate_package, cohort, registry)
        fitted_on = cohort.name
    elif candidate_package.manifest.operating_points == active_package.manifest.operating_points:
        problems.append(
            "operating points are the active version's own (copied); register an "
            "operating-points cohort to fit the candidate's"
        )
    checks: list[GateCheck] = []
    critical = _critical_labels(criteria)
    for cohort in tests:
        reading_a = read_cohort(active_package, cohort, registry)
        reading_c = read_cohort(candidate_package, cohort, registry)
        truth, groups = _truth(cohort, reading_c.labels)
        checks.extend(
            judge_cohort(cohort.name, truth, groups, reading_a, reading_c, criteria, critical)
        )
    judged = f"{candidate_package.name}@{candidate_package.version}"
    active_ref = f"{active_package.name}@{active_package.version}"
    passed = not problems and all(c.passed for c in checks)
    decision = GateDecision(judged, active_ref, passed, tuple(checks), tuple(problems))
    with database.session() as session:
        record_event(
            session,
            actor=actor,
            role=role,
            action=AuditAction.RELEASE_GATE,
            object_uids=[judged],
            details={
                **decision.to_dict(),
                "criteria": asdict(criteria),
                "operating_points_fitted_on": fitted_on,
                "cohorts": {c.name: c.digest for c in tests},
            },
        )
    return decision, judged


@dataclass(frozen=True)
class Promotion:
    """What a promotion did: the alias's new target (None when refused) and the gate's
    decision (None when no test cohort is registered or the gate was skipped)."""

    alias: str
    target: str | None
    decision: GateDecision | None
    gate_skipped: bool = False

    @property
    def promoted(self) -> bool:
        """Whether the alias now points at the candidate."""
        return self.target is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``overread models alias --json`` and the REST API."""
        return {
            "alias": self.alias,
            "target": self.target,
            "promoted": self.promoted,
            "gate": None if self.decision is None else self.decision.to_dict(),
            "gate_skipped": self.gate_skipped,
        }


def promote(
    rollouts: ModelRollouts,
    alias: str,
    candidate: str | None = None,
    *,
    actor: str,
    role: str = "",
    gate: bool = True,
    criteria: GateCriteria | None = None,
) -> Promotion:
    """Promote ``candidate`` (default: the alias's open rollout's) on ``alias``.

    With a test cohort registered (and ``gate``), the release gate runs first: its
    fitted version is what is promoted, and a failed gate leaves the alias as it was
    (``target`` None). The promotion is audited with the gate's evidence.
    """
    if candidate is None:
        rollout = rollouts.store.open_rollout(alias)
        if rollout is None:
            raise ConfigError(f"alias {alias!r} has no shadow or canary to promote")
        candidate = rollout.candidate_ref
    database = rollouts.store.database
    decision: GateDecision | None = None
    target_ref = candidate
    if (
        gate
        and alias in rollouts.registry.aliases()
        and CohortRegistry(database).list(CohortPurpose.TEST)
    ):
        decision, target_ref = release_gate(
            rollouts.registry, database, candidate, alias, actor=actor, role=role, criteria=criteria
        )
        if not decision.passed:
            return Promotion(alias, None, decision)
    evidence: dict[str, Any] = {"gate": None if decision is None else decision.to_dict()}
    if not gate:
        evidence["gate_skipped"] = True
    target = rollouts.promote(alias, target_ref, actor=actor, role=role, evidence=evidence)
    return Promotion(alias, target, decision, gate_skipped=not gate)


__all__ = [
    "Cohort",
    "CohortPurpose",
    "CohortReading",
    "CohortRegistry",
    "GateCheck",
    "GateCriteria",
    "GateDecision",
    "Promotion",
    "RegisteredCohort",
    "fit_operating_points",
    "judge_cohort",
    "promote",
    "read_cohort",
    "release_gate",
    "verify_cohort",
    "write_fitted_package",
]
