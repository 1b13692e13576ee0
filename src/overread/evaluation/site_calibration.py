"""Per-site recalibration: temperature or isotonic maps and thresholds per site.

A model calibrated on one hospital's validation data is rarely calibrated at the
next: another detector, another processing, another prevalence. A small labelled
sample from the new site fits, per label, a map from the package's (globally
calibrated) probability to the site's: temperature scaling (one parameter; keeps
the ranking, so AUC) or isotonic regression (monotone steps; needs more images),
and the operating points on the recalibrated probabilities.

The stated minimum sample: :data:`MIN_SITE_IMAGES` labelled images for temperature
scaling (:data:`MIN_ISOTONIC_IMAGES` for isotonic), with at least
:data:`MIN_PER_CLASS` positives and as many negatives per label. A site below it,
or a label below it, keeps the package's global calibration and thresholds; the
reason is recorded in the entry's ``fallback``. So does a label whose
map does not lower the cross-validated log loss on the site's own sample: a map
that does not help there is not trusted with the site's patients.

The expected calibration error before and after is measured on the same sample by
cross-validation (each image recalibrated by a map fitted without it, or without its
patient's images when patients are given), so the "after" figure is not flattered by
fitting and judging on the same images.

Typical use::

    entry = fit_site(truth, probs, labels, method="temperature")
    recalibrated = site_probabilities(probs_at_site, entry, labels)
    thresholds = site_thresholds(entry, labels, "balanced", global_points)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit

from overread.data.sites import site_key as _site_key
from overread.errors import EvaluationError
from overread.evaluation.calibration import (
    IsotonicCalibration,
    TemperatureScaling,
    calibration_error,
)
from overread.evaluation.operating_points import STANDARD_POINTS, standard_points
from overread.models.manifest import SiteCalibrationEntry, SiteCalibrationSection, SiteLabelMap

# The operating points fitted per site (STANDARD_POINTS) are chosen as the package's
# own are in training: Youden's J, sensitivity >= 0.9, specificity >= 0.9, ordered.

#: Fewest labelled images of a site for temperature scaling.
MIN_SITE_IMAGES = 30

#: Fewest labelled images of a site for isotonic regression (many more parameters).
MIN_ISOTONIC_IMAGES = 100

#: Fewest positives, and fewest negatives, of a label at a site.
MIN_PER_CLASS = 5

#: Bins of the expected calibration error on a site's (small) sample.
ECE_BINS = 10

SiteMethod = Literal["temperature", "isotonic"]

_EPS = 1e-7


def site_key(name: str) -> str:
    """How site names are compared: case and runs of spaces ignored (DICOM pads); the
    rule :mod:`overread.data.sites` matches studies by."""
    return _site_key(name)


def minimum_images(method: str) -> int:
    """The stated minimum sample of a site for ``method``."""
    return MIN_ISOTONIC_IMAGES if method == "isotonic" else MIN_SITE_IMAGES


def _check_method(method: str) -> SiteMethod:
    if method == "temperature":
        return "temperature"
    if method == "isotonic":
        return "isotonic"
    raise EvaluationError(
        f"site calibration method must be temperature or isotonic, not {method!r}"
    )


def _fit_map(method: SiteMethod, y: np.ndarray, p: np.ndarray) -> SiteLabelMap:
    """A map fitted on one label's outcomes ``y`` and probabilities ``p``
    (operating points and counts left to the caller)."""
    if method == "temperature":
        scaling = TemperatureScaling().fit(y, p)
        return SiteLabelMap(temperature=float(scaling.temperature[0]), n=0, n_positive=0)
    iso = IsotonicCalibration().fit(y, p)
    model: Any = iso.model
    x = np.clip(np.asarray(model.X_thresholds_, dtype=np.float64), 0.0, 1.0)
    v = np.clip(np.asarray(model.y_thresholds_, dtype=np.float64), 0.0, 1.0)
    return SiteLabelMap(x=[float(a) for a in x], y=[float(b) for b in v], n=0, n_positive=0)


def map_probabilities(p: ArrayLike, label_map: SiteLabelMap) -> np.ndarray:
    """One label's site probabilities from the package's (any shape)."""
    q = np.asarray(p, dtype=np.float64)
    if label_map.temperature is not None:
        z = logit(np.clip(q, _EPS, 1 - _EPS))
        return np.asarray(expit(z / label_map.temperature))
    if label_map.x:
        return np.asarray(np.interp(q, label_map.x, label_map.y))
    return q


def _folds(y: np.ndarray, k: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """A fold number per image: each class spread evenly over the folds, or, with
    ``groups`` (patients), each group's images kept together in one fold."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        names, index = np.unique(groups, return_inverse=True)
        return np.asarray(rng.permutation(np.arange(len(names)) % k)[index])
    fold = np.empty(len(y), dtype=np.int64)
    for cls in (0.0, 1.0):
        rows = np.flatnonzero(y == cls)
        fold[rows] = rng.permutation(np.arange(len(rows)) % k)
    return fold


def _cross_validated(
    method: SiteMethod, y: np.ndarray, p: np.ndarray, seed: int, groups: np.ndarray | None
) -> np.ndarray:
    """Each image's probability recalibrated by a map fitted on the other folds."""
    k = int(min(5, (y == 1).sum(), (y == 0).sum()))
    if groups is not None:
        k = min(k, len(np.unique(groups)))
    out = np.empty_like(p)
    fold = _folds(y, k, seed, groups)
    for f in range(k):
        test = fold == f
        train = ~test
        if not test.any():
            continue
        if y[train].min() == y[train].max():  # one class left to fit on: no map
            out[test] = p[test]
            continue
        out[test] = map_probabilities(p[test], _fit_map(method, y[train], p[train]))
    return out


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def fit_site(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    labels: Sequence[str],
    *,
    method: str = "temperature",
    min_images: int | None = None,
    min_per_class: int = MIN_PER_CLASS,
    global_points: Mapping[str, Mapping[str, float]] | None = None,
    cohort: Mapping[str, Any] | None = None,
    groups: ArrayLike | None = None,
    seed: int = 0,
) -> SiteCalibrationEntry:
    """Fit one site's recalibration from its labelled sample.

    Parameters
    ----------
    y_true
        ``(n, L)`` outcomes, 1/0, NaN where a label is unknown.
    y_prob
        ``(n, L)`` the package's calibrated probabilities for the same images.
    labels
        The ``L`` label names, in column order.
    method
        ``temperature`` or ``isotonic``.
    min_images
        The site's minimum labelled images (default :func:`minimum_images`).
    min_per_class
        The minimum positives, and negatives, of a label.
    global_points
        The package's operating points ``{label: {point: threshold}}``: points other
        than :data:`STANDARD_POINTS` get the global threshold mapped through the site's
        map (the same decisions as the global threshold on the global probability).
    cohort
        What the sample was (recorded in the entry).
    groups
        ``(n,)`` patient of each image: the cross-validation keeps a patient's images
        in one fold (default: images are independent).

    Returns
    -------
    SiteCalibrationEntry
        Fitted labels, and in ``fallback`` each label left on the global calibration
        with the reason.
    """
    kind = _check_method(method)
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape or y.shape[1] != len(labels):
        raise EvaluationError(
            f"site calibration needs truth and probabilities of shape (n, {len(labels)}), "
            f"got {y.shape} and {p.shape}"
        )
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise EvaluationError("site calibration needs probabilities in [0, 1]")
    patients = None if groups is None else np.asarray(groups).astype(str)
    if patients is not None and len(patients) != len(y):
        raise EvaluationError(f"site calibration needs one group per image, got {len(patients)}")
    floor = minimum_images(kind) if min_images is None else int(min_images)
    fitted: dict[str, SiteLabelMap] = {}
    fallback: dict[str, str] = {}
    for c, label in enumerate(labels):
        known = ~np.isnan(y[:, c])
        yy, pp = (y[known, c] > 0.5).astype(np.float64), p[known, c]
        n, positives = int(known.sum()), int(yy.sum())
        if n < floor:
            fallback[label] = f"{n} labelled images, fewer than the minimum {floor}"
            continue
        if min(positives, n - positives) < min_per_class:
            fallback[label] = (
                f"{positives} positive and {n - positives} negative images; each class needs "
                f"at least {min_per_class}"
            )
            continue
        after = _cross_validated(kind, yy, pp, seed, None if patients is None else patients[known])
        loss_before, loss_after = _log_loss(yy, pp), _log_loss(yy, after)
        if not loss_after < loss_before:
            fallback[label] = (
                f"recalibration did not help on this sample (cross-validated log loss "
                f"{loss_after:.3f}, global {loss_before:.3f})"
            )
            continue
        label_map = _fit_map(kind, yy, pp)
        q = map_probabilities(pp, label_map)
        points = standard_points(yy, q)
        for name, threshold in (global_points or {}).get(label, {}).items():
            if name not in points:
                points[name] = float(np.clip(map_probabilities(threshold, label_map), 0.0, 1.0))
        fitted[label] = label_map.model_copy(
            update={
                "operating_points": points,
                "n": n,
                "n_positive": positives,
                "ece_before": calibration_error(yy, pp, n_bins=ECE_BINS).ece,
                "ece_after": calibration_error(yy, after, n_bins=ECE_BINS).ece,
            }
        )
    return SiteCalibrationEntry(
        method=kind,
        labels=fitted,
        fallback=fallback,
        n=len(y),
        cohort=dict(cohort or {}),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def fit_sites(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    sites: ArrayLike,
    labels: Sequence[str],
    *,
    method: str = "temperature",
    min_images: int | None = None,
    min_per_class: int = MIN_PER_CLASS,
    global_points: Mapping[str, Mapping[str, float]] | None = None,
    groups: ArrayLike | None = None,
    seed: int = 0,
) -> SiteCalibrationSection:
    """:func:`fit_site` for every site in ``sites`` (one name per image)."""
    kind = _check_method(method)
    patients = None if groups is None else np.asarray(groups).astype(str)
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    names = np.asarray(sites).astype(str)
    entries = {
        str(site): fit_site(
            y[names == site],
            p[names == site],
            labels,
            method=kind,
            min_images=min_images,
            min_per_class=min_per_class,
            global_points=global_points,
            groups=None if patients is None else patients[names == site],
            seed=seed,
        )
        for site in np.unique(names)
    }
    return SiteCalibrationSection(
        min_images=minimum_images(kind) if min_images is None else int(min_images),
        min_per_class=min_per_class,
        sites=entries,
    )


def find_site(section: SiteCalibrationSection | None, site: str | None) -> str | None:
    """The section's name for ``site`` (compared by :func:`site_key`), or None."""
    if section is None or not site:
        return None
    wanted = site_key(site)
    return next((name for name in section.sites if site_key(name) == wanted), None)


def site_probabilities(
    y_prob: ArrayLike, entry: SiteCalibrationEntry, labels: Sequence[str]
) -> np.ndarray:
    """``(n, L)`` (or ``(L,)``) probabilities recalibrated for the site; labels the
    entry did not fit keep the package's."""
    p = np.array(y_prob, dtype=np.float64, copy=True)
    for c, label in enumerate(labels):
        label_map = entry.labels.get(label)
        if label_map is not None:
            p[..., c] = map_probabilities(p[..., c], label_map)
    return p


def site_thresholds(
    entry: SiteCalibrationEntry,
    labels: Sequence[str],
    operating_point: str,
    global_points: Mapping[str, Mapping[str, float]],
) -> np.ndarray:
    """``(L,)`` thresholds at ``operating_point`` for the site: its own where fitted,
    the package's (0.5 where none) for labels on the global calibration."""
    out = []
    for label in labels:
        label_map = entry.labels.get(label)
        globals_ = global_points.get(label, {})
        if label_map is not None and operating_point in label_map.operating_points:
            out.append(label_map.operating_points[operating_point])
        elif label_map is not None and operating_point in globals_:
            out.append(float(map_probabilities(globals_[operating_point], label_map)))
        else:
            out.append(globals_.get(operating_point, 0.5))
    return np.asarray(out, dtype=np.float64)


def apply_per_site(
    y_prob: ArrayLike,
    sites: Sequence[str | None],
    section: SiteCalibrationSection | None,
    labels: Sequence[str],
) -> tuple[np.ndarray, list[str | None]]:
    """Each image's probabilities recalibrated for its site, and the section's site
    name used for it (None: unknown site, the package's probabilities kept)."""
    p = np.array(y_prob, dtype=np.float64, copy=True)
    used: list[str | None] = []
    for i, site in enumerate(sites):
        name = find_site(section, site)
        used.append(name)
        if name is not None and section is not None:
            p[i] = site_probabilities(p[i], section.sites[name], labels)
    return p, used


def merge_sites(
    previous: SiteCalibrationSection | None, new: SiteCalibrationSection
) -> SiteCalibrationSection:
    """``new``'s sites over ``previous``'s (a site refitted replaces its old entry)."""
    sites = {}
    if previous is not None:
        refitted = {site_key(n) for n in new.sites}
        sites = {n: e for n, e in previous.sites.items() if site_key(n) not in refitted}
    sites.update(new.sites)
    return new.model_copy(update={"sites": sites})


__all__ = [
    "ECE_BINS",
    "MIN_ISOTONIC_IMAGES",
    "MIN_PER_CLASS",
    "MIN_SITE_IMAGES",
    "STANDARD_POINTS",
    "apply_per_site",
    "find_site",
    "fit_site",
    "fit_sites",
    "map_probabilities",
    "merge_sites",
    "minimum_images",
    "site_key",
    "site_probabilities",
    "site_thresholds",
]
