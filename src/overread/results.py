"""A model's result, typed once: what inference returns and what the service stores.

A prediction crosses from :mod:`overread.inference` to the service as a
:class:`Prediction` of :class:`FindingResult` items, each with a :class:`Decision`;
the gateway stores a study's result as a :class:`ResultSummary` (one
:class:`Prediction` summary per image, the study's header facts, timings). The SR,
SEG, FHIR and overlay builders, triage, the REST API and the UI read these types,
never a dict parsed by hand.

This module sits beside :mod:`overread.findings` at the bottom of the package: it
imports nothing of overread's but the findings vocabulary and the errors, so every
layer can use it. Image metadata stays with :mod:`overread.inference`, whose
``Prediction`` extends this one; where a heatmap sits in the model input is carried
as a :class:`HeatmapPlacement` (which :class:`overread.imaging.transforms.Letterbox`
satisfies).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from overread.errors import OverreadError

log = logging.getLogger(__name__)


class Decision(StrEnum):
    """What the model says of one finding at its operating point.

    ``INDETERMINATE``: too close to the threshold to call; a reader must look. Its
    wire value was ``"refer"`` before; :meth:`parse` still reads that.
    """

    POSITIVE = "positive"
    INDETERMINATE = "indeterminate"
    NEGATIVE = "negative"

    @classmethod
    def parse(cls, value: object) -> Decision:
        """The decision ``value`` names (``"refer"`` is read as ``INDETERMINATE``).

        Raises
        ------
        OverreadError
            If ``value`` names no decision.
        """
        if isinstance(value, Decision):
            return value
        text = str(value).strip().lower()
        if text == _LEGACY_INDETERMINATE:
            return cls.INDETERMINATE
        try:
            return cls(text)
        except ValueError:
            known = ", ".join(d.value for d in cls)
            raise OverreadError(f"unknown decision {value!r} (known: {known})") from None

    @classmethod
    def of_flag(cls, positive: bool) -> Decision:
        """``POSITIVE`` or ``NEGATIVE`` from a thresholded flag."""
        return cls.POSITIVE if positive else cls.NEGATIVE

    @property
    def severity(self) -> int:
        """How strongly it calls the finding: positive 2, indeterminate 1, negative 0.

        Where images of one study are merged, the strongest decision speaks for it.
        """
        return _SEVERITY[self]


#: The wire value older results and ``predict --json`` output used for INDETERMINATE.
_LEGACY_INDETERMINATE = "refer"

_SEVERITY = {Decision.POSITIVE: 2, Decision.INDETERMINATE: 1, Decision.NEGATIVE: 0}


class HeatmapPlacement(Protocol):
    """Where the stored image sits inside a letterboxed model input (and its heatmaps)."""

    @property
    def top(self) -> int: ...

    @property
    def left(self) -> int: ...

    @property
    def new_rows(self) -> int: ...

    @property
    def new_cols(self) -> int: ...


@dataclass(frozen=True)
class ModelRef:
    """Provenance of a result: which model package produced it."""

    name: str
    version: str
    sha256: str = ""
    runtime: str = "onnx"
    precision: str = "fp32"
    trained: bool = True
    #: False for an onboarded model whose thresholds were never fitted on local images
    #: (every threshold 0.5): readers are told so in the SR and the UI.
    calibrated: bool = True

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the package checksum (for display)."""
        return self.sha256[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``predict --json``)."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "runtime": self.runtime,
            "precision": self.precision,
            "trained": self.trained,
            "calibrated": self.calibrated,
        }

    def to_summary_dict(self) -> dict[str, Any]:
        """The identity kept with a stored result: name, version, sha256 (and
        ``calibrated: false`` for an uncalibrated onboarded model)."""
        data: dict[str, Any] = {"name": self.name, "version": self.version, "sha256": self.sha256}
        if not self.calibrated:
            data["calibrated"] = False
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRef:
        """Read either form back; absent identity fields read as ``""``."""
        return cls(
            name=str(data.get("name") or ""),
            version=str(data.get("version") or ""),
            sha256=str(data.get("sha256") or ""),
            runtime=str(data.get("runtime") or "onnx"),
            precision=str(data.get("precision") or "fp32"),
            trained=bool(data.get("trained", True)),
            calibrated=bool(data.get("calibrated", True)),
        )


Code = tuple[str, str, str]


@dataclass(frozen=True, init=False)
class FindingResult:
    """One label's outcome on one image (or on a study, merged over its images).

    Attributes
    ----------
    probability
        Calibrated probability.
    positive
        ``probability >= threshold``.
    threshold_proximity
        How close the probability lies to the operating point's threshold: 1 at it,
        0 as far as possible on its side (see
        :func:`overread.inference.postprocess.decide`); ``None`` when not known. It
        says how near the decision is to flipping, not what the model knows: it was
        called ``uncertainty`` before (stored results with that key still read).
    threshold
        The threshold of the operating point used; NaN when not known (stored as
        ``null``).
    decision
        At the operating point; defaults to the ``positive`` flag's.
    codes
        ``(scheme, value, meaning)`` triples from the model package.
    entropy
        Predictive entropy of the (mean) probability in bits, in [0, 1]; ``None``
        when not computed.
    mutual_information
        Epistemic part of the entropy (BALD: entropy of the mean minus the mean
        entropy of the samples from test-time augmentation, MC dropout or an
        ensemble) in bits; ``None`` with a single pass.
    conformal_set
        The split-conformal prediction set for the label: ``"positive"``,
        ``"negative"``, ``"both"`` (ambiguous) or ``"empty"``; ``None`` when the
        package carries no conformal calibration.
    trust_score
        Explanation trust in [0, 1], from ``map_concentration`` (how concentrated
        the heatmap is) and ``deletion_drop`` (relative fall of the probability when
        the map's top region is removed); ``None`` when not explained.
    """

    label: str
    probability: float
    positive: bool
    threshold_proximity: float | None
    threshold: float
    decision: Decision
    operating_point: str
    codes: tuple[Code, ...]
    entropy: float | None
    mutual_information: float | None
    conformal_set: str | None
    trust_score: float | None
    map_concentration: float | None
    deletion_drop: float | None

    def __init__(
        self,
        label: str,
        probability: float,
        positive: bool,
        threshold_proximity: float | None = None,
        threshold: float = math.nan,
        decision: Decision | str | None = None,
        operating_point: str = "balanced",
        codes: Sequence[Sequence[str]] = (),
        *,
        entropy: float | None = None,
        mutual_information: float | None = None,
        conformal_set: str | None = None,
        trust_score: float | None = None,
        map_concentration: float | None = None,
        deletion_drop: float | None = None,
    ) -> None:
        if conformal_set is not None and conformal_set not in CONFORMAL_SETS:
            raise OverreadError(
                f"unknown conformal set {conformal_set!r} (known: {', '.join(CONFORMAL_SETS)})"
            )
        setattr_ = object.__setattr__
        setattr_(self, "label", str(label))
        setattr_(self, "probability", float(probability))
        setattr_(self, "positive", bool(positive))
        setattr_(self, "threshold_proximity", _optional_float(threshold_proximity))
        setattr_(self, "entropy", _optional_float(entropy))
        setattr_(self, "mutual_information", _optional_float(mutual_information))
        setattr_(self, "conformal_set", conformal_set)
        setattr_(self, "trust_score", _optional_float(trust_score))
        setattr_(self, "map_concentration", _optional_float(map_concentration))
        setattr_(self, "deletion_drop", _optional_float(deletion_drop))
        setattr_(self, "threshold", math.nan if threshold is None else float(threshold))
        setattr_(
            self,
            "decision",
            Decision.of_flag(bool(positive))
            if decision in (None, "")
            else Decision.parse(decision),
        )
        setattr_(self, "operating_point", str(operating_point))
        setattr_(self, "codes", tuple((str(c[0]), str(c[1]), str(c[2])) for c in codes))

    @property
    def known_threshold(self) -> float | None:
        """The threshold, ``None`` when not known."""
        return None if math.isnan(self.threshold) else self.threshold

    def with_values(self, **changes: Any) -> FindingResult:
        """A copy with some attributes changed (the type is frozen)."""
        values = {name: getattr(self, name) for name in _FINDING_ATTRIBUTES}
        values.update(changes)
        return FindingResult(**values)

    def trust_dict(self) -> dict[str, float | str | None]:
        """Uncertainty and explanation trust, the optional per-finding evidence."""
        return {
            "entropy": _rounded(self.entropy),
            "mutual_information": _rounded(self.mutual_information),
            "conformal_set": self.conformal_set,
            "trust_score": _rounded(self.trust_score),
            "map_concentration": _rounded(self.map_concentration),
            "deletion_drop": _rounded(self.deletion_drop),
        }

    def _known_trust(self) -> dict[str, float | str | None]:
        """The stored forms keep only the evidence that was computed."""
        return {k: v for k, v in self.trust_dict().items() if v is not None}

    def _stored_probability(self) -> float:
        """The probability to 6 decimals, unrounded where rounding would carry it across
        the threshold (a negative just below it stored at or above it, or the reverse)."""
        rounded = round(self.probability, 6)
        threshold = self.known_threshold
        if threshold is not None and (rounded >= threshold) != (self.probability >= threshold):
            return float(self.probability)
        return rounded

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as ``predict --json`` writes it (every key always present)."""
        return {
            "label": self.label,
            "probability": self._stored_probability(),
            "positive": self.positive,
            "threshold_proximity": _rounded(self.threshold_proximity),
            "threshold": self.known_threshold,
            "decision": self.decision.value,
            "operating_point": self.operating_point,
            "codes": [list(c) for c in self.codes],
            **self.trust_dict(),
        }

    def to_summary_dict(self) -> dict[str, Any]:
        """The form stored with a result (``summary["instances"][i]["findings"]``)."""
        return {
            "label": self.label,
            "probability": self.probability,
            "positive": self.positive,
            "threshold_proximity": self.threshold_proximity,
            "threshold": self.known_threshold,
            "decision": self.decision.value,
            "codes": [list(c) for c in self.codes],
            **self._known_trust(),
        }

    def to_worklist_dict(self) -> dict[str, Any]:
        """The form stored in a worklist row (``worklist_items.findings``)."""
        return {
            "label": self.label,
            "probability": self.probability,
            "positive": self.positive,
            "threshold_proximity": self.threshold_proximity,
            "threshold": self.known_threshold,
            "decision": self.decision.value,
            **self._known_trust(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FindingResult:
        """Read any of the three forms back (a legacy ``"refer"`` decision included).

        Stored JSON is read tolerantly, as before the typed result: an unknown decision
        reads as the ``positive`` flag's and a code entry that is not a
        ``(scheme, value, meaning)`` triple is skipped, each with a logged warning, so
        one bad value never makes a whole result unreadable.

        Raises
        ------
        OverreadError
            If the label or probability is missing.
        """
        if not data.get("label") or data.get("probability") is None:
            raise OverreadError(f"a stored finding needs a label and a probability: {data!r}")
        label = str(data["label"])
        positive = bool(data.get("positive", False))
        return cls(
            label=label,
            probability=float(data["probability"]),
            positive=positive,
            threshold_proximity=_optional_float(
                data.get("threshold_proximity", data.get(_LEGACY_PROXIMITY))
            ),
            threshold=math.nan if data.get("threshold") is None else float(data["threshold"]),
            decision=_stored_decision(label, data.get("decision"), positive),
            operating_point=str(data.get("operating_point") or "balanced"),
            codes=_stored_codes(label, data.get("codes")),
            entropy=_optional_float(data.get("entropy")),
            mutual_information=_optional_float(data.get("mutual_information")),
            conformal_set=_stored_conformal_set(label, data.get("conformal_set")),
            trust_score=_optional_float(data.get("trust_score")),
            map_concentration=_optional_float(data.get("map_concentration")),
            deletion_drop=_optional_float(data.get("deletion_drop")),
        )


#: The attributes :meth:`FindingResult.with_values` copies.
_FINDING_ATTRIBUTES = (
    "label",
    "probability",
    "positive",
    "threshold_proximity",
    "threshold",
    "decision",
    "operating_point",
    "codes",
    "entropy",
    "mutual_information",
    "conformal_set",
    "trust_score",
    "map_concentration",
    "deletion_drop",
)

#: The key stored results used for ``threshold_proximity`` before it was renamed.
_LEGACY_PROXIMITY = "uncertainty"

#: The values of :attr:`FindingResult.conformal_set`.
CONFORMAL_SETS = ("positive", "negative", "both", "empty")


def _stored_conformal_set(label: str, value: Any) -> str | None:
    """A stored conformal set; an unknown value is dropped with a warning."""
    if value in (None, ""):
        return None
    if value not in CONFORMAL_SETS:
        log.warning("finding %r: unknown stored conformal set %r; ignored", label, value)
        return None
    return str(value)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _stored_decision(label: str, value: Any, positive: bool) -> Decision:
    """A stored decision; an absent one, or one that names no decision, is the flag's."""
    if value in (None, ""):
        return Decision.of_flag(positive)
    try:
        return Decision.parse(value)
    except OverreadError:
        fallback = Decision.of_flag(positive)
        log.warning(
            "finding %r: unknown stored decision %r; read as %s from its positive flag",
            label,
            value,
            fallback.value,
        )
        return fallback


def _stored_codes(label: str, value: Any) -> list[Code]:
    """The stored ``(scheme, value, meaning)`` triples; malformed entries are skipped."""
    if not value:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        log.warning("finding %r: stored codes %r are not a list; skipped", label, value)
        return []
    codes: list[Code] = []
    for entry in value:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
            log.warning("finding %r: stored code %r is not a triple; skipped", label, entry)
            continue
        codes.append((str(entry[0]), str(entry[1]), str(entry[2])))
    return codes


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _readable(data: Mapping[str, Any]) -> bool:
    """Whether a stored finding has what every reader needs (a label and a number)."""
    probability = data.get("probability")
    return bool(data.get("label")) and probability is not None


#: The input gate's verdicts, from letting an image through to refusing it.
GATE_STATUSES = ("pass", "flag", "refuse")


@dataclass(frozen=True)
class GateVerdict:
    """What the input gate said of an image before inference.

    Attributes
    ----------
    status
        ``pass``: an image the model was made for; ``flag``: analysed, with the
        reasons shown; ``refuse``: not analysed (the study stays on the worklist as
        "not analysed: REASON").
    reasons
        One line each, for the reader.
    ood_score
        The pixel check's out-of-distribution score (higher is further from the
        images the model was made for); ``None`` when the package has no pixel check.
    overridden
        A reader chose "analyse anyway" for a refused image.
    """

    status: str = "pass"
    reasons: tuple[str, ...] = ()
    ood_score: float | None = None
    overridden: bool = False

    def __post_init__(self) -> None:
        if self.status not in GATE_STATUSES:
            raise OverreadError(
                f"unknown gate status {self.status!r} (known: {', '.join(GATE_STATUSES)})"
            )
        object.__setattr__(self, "reasons", tuple(str(r) for r in self.reasons))

    @property
    def refused(self) -> bool:
        """Refused and not overridden: the model does not read this image."""
        return self.status == "refuse" and not self.overridden

    @property
    def reason(self) -> str:
        """The reasons in one line (``""`` when there are none)."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``predict --json``, stored results)."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "ood_score": _rounded(self.ood_score),
            "overridden": self.overridden,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateVerdict:
        """Read it back; an unknown status reads as ``flag`` (shown, never hidden)."""
        status = str(data.get("status") or "pass")
        if status not in GATE_STATUSES:
            log.warning("unknown stored gate status %r; read as flag", status)
            status = "flag"
        reasons = data.get("reasons") or ()
        if isinstance(reasons, str):
            reasons = (reasons,)
        return cls(
            status=status,
            reasons=tuple(str(r) for r in reasons),
            ood_score=_optional_float(data.get("ood_score")),
            overridden=bool(data.get("overridden", False)),
        )


@dataclass(frozen=True)
class Region:
    """One object a segmentation or detection model found in a volume (a nodule).

    Coordinates are in the patient frame (LPS, mm): ``centre_mm`` the centroid,
    ``box_mm`` the axis-aligned box ``(x0, y0, z0, x1, y1, z1)`` of the voxel
    centres' extent grown by half a voxel; ``box_voxels`` is
    ``(slice0, row0, col0, slice1, row1, col1)`` (ends exclusive) in the source
    volume. ``density`` is ``solid``, ``part-solid`` or ``ground-glass``;
    ``category`` the Lung-RADS-style size/density category (see
    :func:`overread.inference.nodules.categorise`); ``growth`` compares it with the
    matched nodule of the latest prior result (``None`` without a prior).
    """

    label: str
    index: int
    score: float
    volume_mm3: float
    longest_diameter_mm: float
    mean_hu: float
    solid_fraction: float
    density: str
    category: str
    centre_mm: tuple[float, float, float]
    box_mm: tuple[float, float, float, float, float, float]
    box_voxels: tuple[int, int, int, int, int, int]
    segment_number: int | None = None
    growth: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (also what a stored result keeps)."""
        return {
            "label": self.label,
            "index": self.index,
            # Unrounded: a region does not carry its threshold, and a score rounded
            # to 6 decimals could land across it (a reported nodule stored below it).
            "score": float(self.score),
            "volume_mm3": round(self.volume_mm3, 3),
            "longest_diameter_mm": round(self.longest_diameter_mm, 3),
            "mean_hu": round(self.mean_hu, 2),
            "solid_fraction": round(self.solid_fraction, 4),
            "density": self.density,
            "category": self.category,
            "centre_mm": [round(v, 3) for v in self.centre_mm],
            "box_mm": [round(v, 3) for v in self.box_mm],
            "box_voxels": list(self.box_voxels),
            "segment_number": self.segment_number,
            "growth": None if self.growth is None else dict(self.growth),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Region:
        """Read a stored region back."""
        centre = tuple(float(v) for v in data.get("centre_mm") or (0.0, 0.0, 0.0))
        box = tuple(float(v) for v in data.get("box_mm") or (0.0,) * 6)
        voxels = tuple(int(v) for v in data.get("box_voxels") or (0,) * 6)
        number = data.get("segment_number")
        return cls(
            label=str(data.get("label") or ""),
            index=int(data.get("index") or 0),
            score=float(data.get("score") or 0.0),
            volume_mm3=float(data.get("volume_mm3") or 0.0),
            longest_diameter_mm=float(data.get("longest_diameter_mm") or 0.0),
            mean_hu=float(data.get("mean_hu") or 0.0),
            solid_fraction=float(data.get("solid_fraction") or 0.0),
            density=str(data.get("density") or ""),
            category=str(data.get("category") or ""),
            centre_mm=(centre[0], centre[1], centre[2]),
            box_mm=(box[0], box[1], box[2], box[3], box[4], box[5]),
            box_voxels=(voxels[0], voxels[1], voxels[2], voxels[3], voxels[4], voxels[5]),
            segment_number=None if number is None else int(number),
            growth=None if data.get("growth") is None else dict(data["growth"]),
        )


@dataclass
class Prediction:
    """A model's result for one input, successful (``ok``) or not (``error``).

    ``heatmaps`` are per-label maps in [0, 1] at the model input resolution;
    ``letterbox`` says where the stored image sits in them (only when explaining).
    ``masks`` are a segmentation model's per-label masks on the stored image.
    ``gate`` is the input gate's verdict (``None`` where no gate ran);
    ``outside_intended_use`` marks a result a reader asked for on an image the
    gate refused. ``regions`` are the objects a volumetric (segmentation or
    detection) model found in a series (``None`` for a classifier); ``task`` is the
    package's task.
    """

    path: str | None
    ok: bool
    model: ModelRef
    error: str | None = None
    findings: list[FindingResult] = field(default_factory=list)
    heatmaps: dict[str, np.ndarray] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    letterbox: HeatmapPlacement | None = None
    masks: dict[str, np.ndarray] | None = None
    gate: GateVerdict | None = None
    outside_intended_use: bool = False
    regions: list[Region] | None = None
    task: str = "multi-label-classification"

    @property
    def positives(self) -> list[FindingResult]:
        """Findings decided positive."""
        return [f for f in self.findings if f.positive]

    @property
    def study_instance_uid(self) -> str | None:
        """The image's Study Instance UID when known."""
        return None

    @property
    def sop_instance_uid(self) -> str | None:
        """The image's SOP Instance UID when known."""
        return None

    def finding(self, label: str) -> FindingResult:
        """The result for one label."""
        for item in self.findings:
            if item.label == label:
                return item
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (heatmaps left out; they are written as images)."""
        return {
            "path": self.path,
            "ok": self.ok,
            "error": self.error,
            "model": self.model.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "study_instance_uid": self.study_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "outside_intended_use": self.outside_intended_use,
            **self._volume_dict(),
        }

    def _volume_dict(self) -> dict[str, Any]:
        """``task`` and ``regions``, only for a volumetric model's result."""
        if self.regions is None:
            return {}
        return {"task": self.task, "regions": [r.to_dict() for r in self.regions]}

    def to_summary_dict(self) -> dict[str, Any]:
        """The form stored with a result, one per image (``summary["instances"]``);
        ``gate``, ``outside_intended_use`` and ``warnings`` only when there is something
        to say."""
        data: dict[str, Any] = {
            "path": str(self.path),
            "ok": self.ok,
            "error": self.error,
            "model": self.model.to_summary_dict(),
            "findings": [f.to_summary_dict() for f in self.findings],
            "timings": {str(k): float(v) for k, v in self.timings.items()},
        }
        if self.gate is not None:
            data["gate"] = self.gate.to_dict()
        if self.outside_intended_use:
            data["outside_intended_use"] = True
        if self.warnings:
            data["warnings"] = [str(w) for w in self.warnings]
        data.update(self._volume_dict())
        return data

    @classmethod
    def from_summary_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """Read a stored image summary back; findings without a label or a probability
        (which no reader can use) are left out."""
        return cls(
            path=None if data.get("path") is None else str(data["path"]),
            ok=bool(data.get("ok", False)),
            model=ModelRef.from_dict(data.get("model") or {}),
            error=None if data.get("error") is None else str(data["error"]),
            findings=[
                FindingResult.from_dict(f) for f in data.get("findings") or [] if _readable(f)
            ],
            timings={
                str(k): float(v)
                for k, v in (data.get("timings") or {}).items()
                if v is not None and not math.isnan(float(v))
            },
            gate=None if not data.get("gate") else GateVerdict.from_dict(data["gate"]),
            outside_intended_use=bool(data.get("outside_intended_use", False)),
            warnings=[str(w) for w in data.get("warnings") or []],
            regions=None
            if data.get("regions") is None
            else [Region.from_dict(r) for r in data["regions"]],
            task=str(data.get("task") or "multi-label-classification"),
        )


@dataclass(frozen=True)
class StudyHeader:
    """The header facts of a study kept with its result (a FHIR report needs them)."""

    study_instance_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    issuer_of_patient_id: str = ""
    study_date: str = ""
    accession_number: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON-able form (``summary["study"]``)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "issuer_of_patient_id": self.issuer_of_patient_id,
            "study_date": self.study_date,
            "accession_number": self.accession_number,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyHeader:
        """Read it back (absent facts read as ``""``)."""
        return cls(
            **{name: str(data.get(name) or "") for name in cls.__dataclass_fields__},
        )


@dataclass(frozen=True)
class ResultSummary:
    """What the gateway stores with a result (``results.summary``).

    Attributes
    ----------
    alias
        The model alias the study was routed to.
    instances
        One prediction per image of the study, in the order of ``sop_instance_uids``.
    sop_instance_uids
        The images' SOP Instance UIDs.
    study
        The study's header facts (``None`` for results stored before they were kept).
    timings
        Seconds per stage of the infer job, summed over the images.
    calibration
        Which calibration the findings got: the study's site, where it came from, and
        ``site`` or ``global`` (see :mod:`overread.inference.site_calibration`);
        ``None`` for results stored before it was recorded.
    """

    alias: str = ""
    instances: tuple[Prediction, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    study: StudyHeader | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    calibration: Mapping[str, Any] | None = None

    def usable(self) -> list[tuple[int, Prediction]]:
        """``(index, prediction)`` of every image the model read successfully."""
        return [(i, p) for i, p in enumerate(self.instances) if p.ok]

    def sop_instance_uid(self, index: int) -> str:
        """The SOP Instance UID of image ``index`` (``""`` when not recorded)."""
        return self.sop_instance_uids[index] if index < len(self.sop_instance_uids) else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored (``study`` left out when not known)."""
        data: dict[str, Any] = {
            "alias": self.alias,
            "instances": [p.to_summary_dict() for p in self.instances],
            "sop_instance_uids": list(self.sop_instance_uids),
        }
        if self.study is not None:
            data["study"] = self.study.to_dict()
        data["timings"] = dict(self.timings)
        if self.calibration is not None:
            data["calibration"] = dict(self.calibration)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ResultSummary:
        """Read a stored summary back (any key may be missing)."""
        data = data or {}
        study = data.get("study")
        calibration = data.get("calibration")
        return cls(
            alias=str(data.get("alias") or ""),
            instances=tuple(Prediction.from_summary_dict(i) for i in data.get("instances") or []),
            sop_instance_uids=tuple(str(u) for u in data.get("sop_instance_uids") or []),
            study=None if study is None else StudyHeader.from_dict(study),
            timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()},
            calibration=None if calibration is None else dict(calibration),
        )


#: How each site source reads in a calibration statement.
_SITE_SOURCES = {
    "institution": "institution name",
    "station": "station name",
    "calling_ae": "calling AE title",
}


def calibration_statement(calibration: Mapping[str, Any] | None) -> str:
    """One sentence saying which probability calibration a study's findings got, from
    what the service recorded (``summary["calibration"]``, see
    :class:`overread.inference.site_calibration.SiteCalibrationApplied`).

    ``""`` when nothing was recorded (the service does not choose calibrations by site,
    or the result predates it). Written into the SR, the PDF, the FHIR report and the
    study page, so a reader sees whether a site's thresholds decided the findings.
    """
    if not calibration:
        return ""
    site = str(calibration.get("site") or "")
    source = str(calibration.get("source") or "")
    origin = _SITE_SOURCES.get(source, source)
    named = f"site {site!r}" + (f" (from the {origin})" if origin else "") if site else ""
    if calibration.get("calibration") == "site":
        package_site = str(calibration.get("package_site") or site)
        method = str(calibration.get("method") or "")
        text = f"Site calibration applied: {named or 'site'}"
        if package_site and package_site != site:
            text += f", calibrated as {package_site!r}"
        if method:
            text += f", {method} scaling" if method == "temperature" else f", {method} map"
        text += ", with the site's operating-point thresholds."
        fallback = calibration.get("fallback") or {}
        if fallback:
            kept = "; ".join(f"{label}: {reason}" for label, reason in sorted(fallback.items()))
            text += f" Global calibration kept for {kept}."
        return text
    reason = str(calibration.get("reason") or "no site calibration applies")
    return f"Global calibration applied{f' to {named}' if named else ''}: {reason}."


__all__ = [
    "CONFORMAL_SETS",
    "GATE_STATUSES",
    "Decision",
    "FindingResult",
    "GateVerdict",
    "HeatmapPlacement",
    "ModelRef",
    "Prediction",
    "Region",
    "ResultSummary",
    "StudyHeader",
    "calibration_statement",
]
