"""Per-site calibration of a model package: fitted on a site's labelled sample, written
into a new package version, and applied to each study by the site it came from.

``overread models calibrate --site S --data COHORT`` runs the package on the cohort's
images of site ``S`` - matched by the rule the service uses
(:mod:`overread.data.sites`): the configured source value of each image (its
Institution Name or Station Name, from the cohort's Institution or Station column
or its header; a CallingAE column for ``calling_ae``) looked up in the ``sites``
mapping; a cohort with values the mapping does not name is refused - fits the site's temperature or isotonic map and
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from overread.data.sites import (
    SiteMatch,
    mapped_sites,
    match_site,
    site_key,
    unmapped_values,
)
from overread.errors import EvaluationError, ModelPackageError
from overread.evaluation.site_calibration import (
    MIN_PER_CLASS,
    find_site,
    fit_site,
    map_probabilities,
    merge_sites,
    minimum_images,
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
    unmapped
        The study's site value is not in the service's ``sites`` mapping (so it got
        the global calibration: a value is never taken for a site name as it is).
    """

    site: str
    source: str
    calibration: str
    package_site: str | None = None
    method: str | None = None
    fallback: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    unmapped: bool = False

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
        if self.unmapped:
            data["unmapped"] = True
        return data


def unmapped_site(value: str, source: str, package: ModelPackage) -> SiteCalibrationApplied:
    """What a study whose site value ``value`` (from ``source``) the service's ``sites``
    mapping does not name gets: the package's global calibration, with the reason."""
    if package.manifest.site_calibration is None:
        reason = f"{package.name} {package.version} has no per-site calibration"
    else:
        reason = (
            f"{source} {value!r} is not in the [service.site_calibration] sites mapping "
            "(a value is never taken for a site name as it is)"
        )
    logger.info("global calibration: %s", reason)
    return SiteCalibrationApplied(value, source, "global", reason=reason, unmapped=True)


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


#: The truth.csv column that gives each site source's value (before the header).
_SOURCE_COLUMNS = {"institution": "Institution", "station": "Station", "calling_ae": "CallingAE"}


def cohort_site_matches(
    cohort: Path, ids: Sequence[str], source: str, sites: Mapping[str, str]
) -> list[SiteMatch]:
    """For each image (``ids``: truth.csv Paths) its site under the service's rule
    (:func:`overread.data.sites.match_site`): its ``source`` value - the cohort's
    Institution, Station or CallingAE column, else its header's Institution or Station
    Name (a header names no calling AE) - looked up in ``sites``."""
    column = _SOURCE_COLUMNS[source]
    values: dict[str, str] = {}
    with (cohort / "truth.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values[row.get("Path", "")] = row.get(column, "") or ""
    matches = []
    for image in ids:
        value = values.get(image, "")
        if not value.strip() and source != "calling_ae":
            institution, station = _header_names(str(cohort / image))
            value = institution if source == "institution" else station
        matches.append(match_site(source, sites, **{source: value}))
    return matches


def _cohort_paths(cohort: Path) -> list[str]:
    """The images truth.csv lists (its Path column), in its order."""
    with (cohort / "truth.csv").open(newline="", encoding="utf-8") as handle:
        return [row.get("Path", "") or "" for row in csv.DictReader(handle)]


def _listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
    site_source: str = "institution",
    site_map: Mapping[str, str] | None = None,
) -> tuple[ModelPackage, dict[str, Any]]:
    """Fit each site's calibration on its images of ``cohort``; write version ``version``.

    An image is a site's when its ``site_source`` value maps to the site in
    ``site_map`` - the service's ``[service.site_calibration]`` ``source`` and
    ``sites``, so that a study is given the calibration fitted on its like.
    ``whole_cohort``: every image of the cohort is from the (one) site, e.g. when
    the site is a calling AE title no header names (a site the mapping cannot give
    is then written with a warning in the summary). Returns the new package and a
    summary ``{"sites": {site: {"images", "method", "labels": {label: {...}},
    "fallback": {label: reason}}}, "warnings": [...]}``.

    Raises
    ------
    ModelPackageError
        If ``out`` exists or ``version`` is the source's (a version is never edited).
    EvaluationError
        If the cohort has no images of a site, or unreadable images; if a site is not
        one the mapping gives, or the cohort has source values the mapping does not
        name (each listed: a value is never taken for a site name as it is).
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
    mapping = dict(site_map or {})
    known = {site_key(s) for s in mapped_sites(mapping)}
    outside = [s for s in sites if site_key(s) not in known]
    warnings: list[str] = []
    rule = f"[service.site_calibration] sites (source {site_source})"
    if outside and whole_cohort:
        warnings.append(
            f"site {outside[0]!r} is not a site of {rule}: the service will not choose its "
            "calibration until the mapping names it"
        )
    elif outside:
        raise EvaluationError(
            f"site(s) {_listed(outside)} not among the sites of {rule}: "
            f"{_listed(mapped_sites(mapping)) or 'none (the mapping is empty)'}; map the "
            "cohort's values to them, or use --whole-cohort for a cohort of one site"
        )
    # Every image's site, before the model runs on any: a value the mapping does not
    # name stops the fit at once.
    by_path: dict[str, SiteMatch] = {}
    if not whole_cohort:
        paths = _cohort_paths(cohort)
        by_path = dict(
            zip(paths, cohort_site_matches(cohort, paths, site_source, mapping), strict=True)
        )
    unmapped = unmapped_values(by_path.values())
    if unmapped:
        raise EvaluationError(
            f"{cohort}: {len(unmapped)} {site_source} value(s) not in {rule}: "
            f"{_listed(unmapped)}; map each to its site (a value is never taken for a "
            "site name as it is)"
        )
    inputs = cohort_inputs(str(source.path), cohort)
    if inputs.failed:
        raise EvaluationError(
            f"{cohort}: {inputs.failed} image(s) could not be read "
            f"({inputs.warnings[0] if inputs.warnings else ''})"
        )
    labels = inputs.labels
    matches = [
        by_path.get(image) or cohort_site_matches(cohort, [image], site_source, mapping)[0]
        for image in ([] if whole_cohort else inputs.ids)
    ]
    truth_sha = hashlib.sha256((cohort / "truth.csv").read_bytes()).hexdigest()
    floor = minimum_images(method) if min_images is None else min_images
    entries: dict[str, SiteCalibrationEntry] = {}
    for site in sites:
        rows = np.array(
            [whole_cohort] * len(inputs.ids)
            if whole_cohort
            else [m.site is not None and site_key(m.site) == site_key(site) for m in matches],
            dtype=bool,
        )
        if not rows.any():
            present = sorted({m.site for m in matches if m.site})
            raise EvaluationError(
                f"{cohort}: no images of site {site!r} (by {site_source}, the cohort's sites "
                f"are: {', '.join(present) or 'none'}; --whole-cohort takes every image)"
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
                "matched": "whole cohort" if whole_cohort else f"{site_source} via sites",
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
        "site_source": site_source,
        "warnings": warnings,
    }
    return package, summary


__all__ = [
    "SiteCalibrationApplied",
    "apply_site_calibration",
    "calibrate_sites",
    "cohort_site_matches",
    "unmapped_site",
]
