"""Per-site calibration of a model package: fitted on a site's labelled sample, written
into a new package version, and applied to each study by the site it came from.

``overread models calibrate --site S --data COHORT`` runs the package on the cohort's
images of site ``S`` (matched on the cohort's Site or Station column or the images'
Institution Name or Station Name), fits the site's temperature or isotonic map and
operating points (:func:`overread.evaluation.site_calibration.fit_site`) and writes
them, with the sites an earlier version carried, into a NEW package version: the
source package is copied, never edited.

Serving (:func:`apply_site_calibration`) maps each finding's probability through its
site's map and decides it at the site's threshold; a study from a site the package
has no calibration for, and a label the site's sample was too small for, keep the
package's global calibration and thresholds. Either way the result records which
calibration it got (:class:`SiteCalibrationApplied`).

The maps are fitted on the package's calibrated probabilities as the pipeline makes
them by default (its TTA views and dropout passes); conformal sets stay those of the
global probabilities they were calibrated on, and an ambiguous set still makes the
finding indeterminate.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from overread.errors import EvaluationError, ModelPackageError
from overread.evaluation.site_calibration import (
    MIN_PER_CLASS,
    find_site,
    fit_site,
    map_probabilities,
    merge_sites,
    minimum_images,
    site_key,
)
from overread.explain.uncertainty import binary_entropy
from overread.inference.cohort import cohort_inputs
from overread.inference.postprocess import decide
from overread.models.manifest import SiteCalibrationEntry, SiteCalibrationSection
from overread.models.package import ModelPackage, derive_package
from overread.results import Decision, FindingResult, Prediction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteCalibrationApplied:
    """Which calibration a study's findings got, for its result and audit record.

    Attributes
    ----------
    site
        The study's site as the service identified it (``""``: none found).
    source
        Where that came from: ``institution``, ``station`` or ``calling_ae``.
    calibration
        ``site`` (the package's calibration for it) or ``global`` (the package's own).
    package_site
        The package's name for the site whose calibration was applied.
    method
        ``temperature`` or ``isotonic`` when a site's calibration was applied.
    fallback
        Labels kept on the global calibration, each with the reason.
    reason
        Why the whole study kept the global calibration (empty when it did not).
    """

    site: str
    source: str
    calibration: str
    package_site: str | None = None
    method: str | None = None
    fallback: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``summary["calibration"]``)."""
        data: dict[str, Any] = {
            "site": self.site,
            "source": self.source,
            "calibration": self.calibration,
        }
        if self.package_site is not None:
            data["package_site"] = self.package_site
            data["method"] = self.method
        if self.fallback:
            data["fallback"] = dict(self.fallback)
        if self.reason:
            data["reason"] = self.reason
        return data


def _recalibrated(
    finding: FindingResult,
    entry: SiteCalibrationEntry,
    package: ModelPackage,
) -> FindingResult:
    label_map = entry.labels.get(finding.label)
    if label_map is None:
        return finding
    manifest = package.manifest
    probability = float(map_probabilities(finding.probability, label_map))
    point = finding.operating_point
    if point in label_map.operating_points:
        threshold = label_map.operating_points[point]
    else:  # the global threshold carried through the site's map: the same decision
        global_threshold = manifest.operating_points.get(finding.label, {}).get(point, 0.5)
        threshold = float(map_probabilities(global_threshold, label_map))
    positive, proximity, decisions = decide(
        np.array([probability]), np.array([threshold]), manifest.refer_uncertainty
    )
    decision = Decision.parse(decisions[0])
    if finding.conformal_set in ("both", "empty"):
        decision = Decision.INDETERMINATE
    return finding.with_values(
        probability=probability,
        positive=bool(positive[0]),
        threshold_proximity=float(proximity[0]),
        threshold=float(threshold),
        decision=decision,
        entropy=float(binary_entropy(np.array([probability]))[0]),
    )


def apply_site_calibration(
    predictions: Sequence[Prediction],
    package: ModelPackage,
    site: str,
    *,
    source: str = "",
) -> SiteCalibrationApplied:
    """Recalibrate the findings of ``predictions`` (one study) for ``site`` in place.

    Returns what was applied; with no calibration for ``site`` in the package (or no
    site at all) the findings are left as the package made them and the reason is
    logged and returned.
    """
    section = package.manifest.site_calibration
    name = find_site(section, site)
    if section is None or name is None:
        if not site:
            reason = f"no site found ({source or 'site source'} is empty)"
        elif section is None:
            reason = f"{package.name} {package.version} has no per-site calibration"
        else:
            reason = (
                f"site {site!r} is not calibrated in {package.name} {package.version} "
                f"(calibrated: {', '.join(sorted(section.sites))})"
            )
        logger.info("global calibration: %s", reason)
        return SiteCalibrationApplied(site, source, "global", reason=reason)
    entry = section.sites[name]
    if not entry.labels:
        reason = f"site {name!r}: no label has a site map (see fallback)"
        logger.info("global calibration: %s", reason)
        return SiteCalibrationApplied(
            site,
            source,
            "global",
            package_site=name,
            method=entry.method,
            fallback=dict(entry.fallback),
            reason=reason,
        )
    for prediction in predictions:
        if prediction.ok:
            prediction.findings = [_recalibrated(f, entry, package) for f in prediction.findings]
    if entry.fallback:
        logger.info(
            "site %r: %d label(s) on the global calibration: %s",
            name,
            len(entry.fallback),
            "; ".join(f"{k}: {v}" for k, v in sorted(entry.fallback.items())),
        )
    return SiteCalibrationApplied(
        site, source, "site", package_site=name, method=entry.method, fallback=dict(entry.fallback)
    )


# -- fitting from a cohort -------------------------------------------------------


def _header_names(path: str) -> tuple[str, str]:
    """An image's Institution Name and Station Name (empty when absent or unreadable)."""
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["InstitutionName", "StationName"]
        )
    except Exception:  # an unreadable header simply matches no site by header
        return "", ""
    return str(ds.get("InstitutionName", "") or ""), str(ds.get("StationName", "") or "")


def cohort_site_names(cohort: Path, ids: Sequence[str]) -> list[set[str]]:
    """For each image (``ids``: truth.csv Paths) the names it could be known by:
    the cohort's Site and Station columns and its header's Institution and Station Name
    (compare them with :func:`~overread.evaluation.site_calibration.site_key`)."""
    columns: dict[str, dict[str, str]] = {}
    with (cohort / "truth.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            columns[row.get("Path", "")] = {
                k: row.get(k, "") or "" for k in ("Site", "Station", "Institution")
            }
    names = []
    for image in ids:
        found = set(columns.get(image, {}).values())
        found.update(_header_names(str(cohort / image)))
        names.append({" ".join(n.split()) for n in found if n.strip()})
    return names


def calibrate_sites(
    source: ModelPackage,
    cohort: Path,
    out: Path,
    *,
    sites: Sequence[str],
    version: str,
    method: str = "temperature",
    min_images: int | None = None,
    whole_cohort: bool = False,
    seed: int = 0,
    key: bytes | None = None,
) -> tuple[ModelPackage, dict[str, Any]]:
    """Fit each site's calibration on its images of ``cohort``; write version ``version``.

    ``whole_cohort``: every image of the cohort is from the (one) site, e.g. when
    the site is a calling AE title no header names. Returns the new package and a
    summary ``{"sites": {site: {"images", "method", "labels": {label: {...}},
    "fallback": {label: reason}}}}``.

    Raises
    ------
    ModelPackageError
        If ``out`` exists or ``version`` is the source's (a version is never edited).
    EvaluationError
        If the cohort has no images of a site, or unreadable images.
    """
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    if version == source.version:
        raise ModelPackageError(
            f"{source.name} {source.version}: a derived package needs a new version number"
        )
    if not sites:
        raise EvaluationError("name at least one site")
    if whole_cohort and len(sites) != 1:
        raise EvaluationError("a whole cohort is the sample of one site; name one")
    inputs = cohort_inputs(str(source.path), cohort)
    if inputs.failed:
        raise EvaluationError(
            f"{cohort}: {inputs.failed} image(s) could not be read "
            f"({inputs.warnings[0] if inputs.warnings else ''})"
        )
    labels = inputs.labels
    known_as = cohort_site_names(cohort, inputs.ids)
    truth_sha = hashlib.sha256((cohort / "truth.csv").read_bytes()).hexdigest()
    floor = minimum_images(method) if min_images is None else min_images
    entries: dict[str, SiteCalibrationEntry] = {}
    for site in sites:
        rows = np.array(
            [whole_cohort or site_key(site) in {site_key(n) for n in names} for names in known_as],
            dtype=bool,
        )
        if not rows.any():
            present = sorted({n for names in known_as for n in names})
            raise EvaluationError(
                f"{cohort}: no images of site {site!r} (the cohort names: "
                f"{', '.join(present) or 'none'}; --whole-cohort takes every image)"
            )
        entries[site] = fit_site(
            inputs.truth[rows],
            inputs.scores[rows],
            labels,
            method=method,
            min_images=floor,
            global_points=source.manifest.operating_points,
            cohort={
                "cohort": cohort.name,
                "images": int(rows.sum()),
                "matched": "whole cohort" if whole_cohort else "site, station or institution",
                "truth_sha256": truth_sha,
                "seed": seed,
            },
            groups=None if inputs.patient_ids is None else inputs.patient_ids[rows],
            seed=seed,
        )
    new = SiteCalibrationSection(min_images=floor, min_per_class=MIN_PER_CLASS, sites=entries)
    section = merge_sites(source.manifest.site_calibration, new)
    package = derive_package(source, out, version=version, key=key, site_calibration=section)
    summary = {
        "sites": {
            site: {
                "images": entry.n,
                "method": entry.method,
                "labels": {
                    label: {
                        "n": m.n,
                        "n_positive": m.n_positive,
                        "temperature": m.temperature,
                        "ece_before": m.ece_before,
                        "ece_after": m.ece_after,
                        "operating_points": m.operating_points,
                    }
                    for label, m in entry.labels.items()
                },
                "fallback": entry.fallback,
            }
            for site, entry in entries.items()
        },
        "min_images": floor,
        "min_per_class": MIN_PER_CLASS,
        "sites_in_package": sorted(section.sites),
    }
    return package, summary


__all__ = [
    "SiteCalibrationApplied",
    "apply_site_calibration",
    "calibrate_sites",
    "cohort_site_names",
]
