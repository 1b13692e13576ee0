"""Fitting the candidate score of the two-stage nodule CAD on training phantoms.

For each case of a cohort ``overread phantom ct`` wrote, the blob candidates of
:func:`overread.models.blob_cad.find_candidates` inside the lung are labelled by the
truth (a candidate is a nodule when its centre lies in a nodule's sphere, as the
FROC counts a hit); revision 2 fits a ridge-penalised logistic regression of their
features (:func:`fit_cad`), revision 3 a gradient-boosted tree ensemble exported as
plain numbers (:func:`fit_cad_trees`); the ``blob-cad`` postprocess scores with them
(:func:`overread.models.ct_cad.write_cad_package`).

The lung here is a threshold rule on the source grid: HU <= -700, the components not
touching the in-plane sides holding at least 10% of the largest, holes filled slice by
slice. The package's lung is the classical mask on a 2 mm grid (airways out, the dome
out, the edge grown; revision 3 closes it by a ball before taking candidates), so the
candidate sets differ somewhat at the lung's edge and the hilum: the bundled trees were
fitted on this rule's candidates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from overread.errors import ConfigError
from overread.models.blob_cad import (
    CANDIDATE_CLOSING_MM,
    MAX_CANDIDATES,
    MAX_CANDIDATES_V3,
    candidate_features,
    candidate_features_v3,
    find_candidates,
    fit_weights,
)
from overread.models.ct_cad import FLOOR_POINT
from overread.models.manifest import Manifest
from overread.training.ct_eval import read_cases, read_nodules


def source_lung(
    hu: npt.NDArray[np.float32], *, lung_max_hu: float = -700.0
) -> npt.NDArray[np.bool_]:
    """The package's lung rule on the source grid (see the module)."""
    air = hu <= lung_max_hu
    labels, count = ndimage.label(air, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return air
    sides = np.concatenate(
        [
            labels[:, 0, :].ravel(),
            labels[:, -1, :].ravel(),
            labels[:, :, 0].ravel(),
            labels[:, :, -1].ravel(),
        ]
    )
    border = {int(v) for v in np.unique(sides) if v}
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, count + 1))
    keep = [i + 1 for i in range(count) if i + 1 not in border]
    if not keep:
        return np.zeros(hu.shape, dtype=bool)
    largest = max(sizes[k - 1] for k in keep)
    lung = np.isin(labels, [k for k in keep if sizes[k - 1] >= 0.1 * largest])
    return np.stack([ndimage.binary_fill_holes(plane) for plane in lung])


@dataclass
class CandidateSet:
    """Features (one row per candidate), labels (1 = hits a nodule) and the nodules found."""

    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int_]
    nodules: int
    nodules_with_candidate: int


def _case_truth(folder: Path) -> tuple[npt.NDArray[np.float64], list[dict[str, Any]]]:
    """A case's affine (``case.json``) and nodules, each with a ``centre_voxel`` of
    three numbers (what labelling candidates reads): a ConfigError otherwise."""
    path = folder / "case.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        affine = np.array(info["affine_lps"], dtype=np.float64)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON: {exc}") from None
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: no 'affine_lps' of 4 x 4 numbers") from None
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or affine[2, 2] == 0:
        raise ConfigError(f"{path}: 'affine_lps' is not a 4 x 4 affine with a slice step")
    nodules = read_nodules(folder / "nodules.json")
    for i, nod in enumerate(nodules):
        voxel = nod.get("centre_voxel")
        if not (
            isinstance(voxel, list)
            and len(voxel) == 3
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
                for v in voxel
            )
        ):
            raise ConfigError(
                f"{folder / 'nodules.json'}: nodule {i + 1}: 'centre_voxel' is not three numbers"
            )
    return affine, nodules


def cohort_candidates(
    root: str | Path,
    *,
    revision: int = 2,
    echo: Callable[[str], None] | None = None,
) -> CandidateSet:
    """Every case's candidates in ``root``, labelled by its truth: the features of
    revision 2 (:data:`~overread.models.blob_cad.FEATURES`, candidates in the lung) or
    of revision 3 (:data:`~overread.models.blob_cad.FEATURES_V3`, candidates in the
    lung closed by :data:`~overread.models.blob_cad.CANDIDATE_CLOSING_MM`)."""
    from overread.imaging.series import load_series

    root = Path(root)
    # Every case and its truth checked before any candidate is searched for (minutes
    # per case): a bad cohort is one ConfigError, not a traceback an hour in.
    cases = read_cases(root)
    truths = [_case_truth(root / row["case"]) for row in cases]
    rows: list[npt.NDArray[np.float64]] = []
    labels: list[int] = []
    total = found = 0
    for row, (affine, nodules) in zip(cases, truths, strict=True):
        folder = root / row["case"]
        volume = load_series([folder / "series"]).volumes[0]
        z0, step = affine[2, 3], affine[2, 2]
        index = [round((p - z0) / step) for p in volume.positions]
        spacing = (float(step), float(volume.spacing[1]), float(volume.spacing[2]))
        hu = np.asarray(volume.pixels, dtype=np.float32)
        closing = CANDIDATE_CLOSING_MM if revision >= 3 else 0.0
        cap = MAX_CANDIDATES_V3 if revision >= 3 else MAX_CANDIDATES
        candidates = find_candidates(
            hu, spacing, source_lung(hu), closing_mm=closing, max_candidates=cap
        )
        centres = []
        for nod in nodules:
            col, r, k = nod["centre_voxel"]
            z = float(np.interp(k, index, np.arange(len(index))))
            centres.append((np.array([z, r, col]), nod["diameter_mm"] / 2))
        hit_nodules: set[int] = set()
        for c in candidates:
            point = np.asarray(c.centre, dtype=np.float64)
            hit = [
                i
                for i, (centre, radius) in enumerate(centres)
                if np.linalg.norm((point - centre) * spacing) <= radius
            ]
            rows.append(
                candidate_features_v3(hu, spacing, c) if revision >= 3 else candidate_features(c)
            )
            labels.append(1 if hit else 0)
            hit_nodules.update(hit)
        total += len(nodules)
        found += len(hit_nodules)
        if echo is not None:
            echo(
                f"  {row['case']}: {len(candidates)} candidates, {len(hit_nodules)}/{len(nodules)} nodules"
            )
    return CandidateSet(np.array(rows), np.array(labels, dtype=int), total, found)


def fit_cad(
    root: str | Path, *, l2: float = 1.0, echo: Callable[[str], None] | None = None
) -> tuple[tuple[float, ...], CandidateSet]:
    """Logistic candidate weights fitted on the cohort ``root`` (see the module)."""
    data = cohort_candidates(root, echo=echo)
    if data.labels.sum() == 0 or data.labels.sum() == len(data.labels):
        raise ConfigError(f"{root}: the candidates need both nodules and non-nodules to fit")
    return fit_weights(data.features, data.labels, l2=l2), data


#: The tree ensemble of revision 3 (scikit-learn's gradient boosting, log loss).
TREE_SETTINGS: dict[str, float | int] = {
    "n_estimators": 300,
    "max_depth": 3,
    "learning_rate": 0.03,
    "min_samples_leaf": 100,
    "subsample": 0.5,
}


def fit_trees(
    features: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int_],
    *,
    seed: int = 0,
    settings: dict[str, float | int] | None = None,
) -> tuple[tuple[float, ...], ...]:
    """A gradient-boosted tree ensemble on the candidates, as plain numbers.

    The format of :func:`overread.models.blob_cad.tree_scores`: a one-leaf tree with
    the initial log-odds, then each fitted tree's nodes (the learning rate folded into
    the leaves), so a package scores without scikit-learn and without pickles. The
    numbers are kept as fitted (not rounded): the scores are scikit-learn's.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    params = dict(TREE_SETTINGS if settings is None else settings)
    model = GradientBoostingClassifier(
        n_estimators=int(params["n_estimators"]),
        max_depth=int(params["max_depth"]),
        learning_rate=float(params["learning_rate"]),
        min_samples_leaf=int(params["min_samples_leaf"]),
        subsample=float(params["subsample"]),
        random_state=seed,
    )
    model.fit(features, labels)
    y = float(np.mean(labels))
    trees: list[tuple[float, ...]] = [(-1.0, float(np.log(y / (1.0 - y))), -1.0, -1.0)]
    rate = float(params["learning_rate"])
    for estimator in model.estimators_[:, 0]:
        tree = estimator.tree_
        flat: list[float] = []
        for i in range(int(tree.node_count)):
            left, right = int(tree.children_left[i]), int(tree.children_right[i])
            if left < 0:
                flat += [-1.0, rate * float(tree.value[i, 0, 0]), -1.0, -1.0]
            else:
                # The threshold as scikit-learn holds it (not rounded): it compares
                # the feature as float32 with it, and so does tree_scores.
                flat += [float(tree.feature[i]), float(tree.threshold[i]), left, right]
        trees.append(tuple(float(v) for v in flat))
    return tuple(trees)


def fit_cad_trees(
    root: str | Path, *, seed: int = 0, echo: Callable[[str], None] | None = None
) -> tuple[tuple[tuple[float, ...], ...], CandidateSet]:
    """Revision 3: the tree ensemble fitted on the cohort ``root`` (see :func:`fit_trees`)."""
    data = cohort_candidates(root, revision=3, echo=echo)
    if data.labels.sum() == 0 or data.labels.sum() == len(data.labels):
        raise ConfigError(f"{root}: the candidates need both nodules and non-nodules to fit")
    return fit_trees(data.features, data.labels, seed=seed), data


#: A CAD package's nodule operating points: the false positives per scan each allows
#: on training phantoms (the lowest score whose FROC point is at most the rate).
NODULE_FP_RATES: dict[str, float] = {"balanced": 1.0, "high sensitivity": 4.0}


def nodule_operating_points(
    metrics: dict[str, Any], *, rates: dict[str, float] | None = None
) -> dict[str, float]:
    """``{name: threshold}`` for each rate of ``rates`` (default :data:`NODULE_FP_RATES`)
    on the FROC of ``metrics`` (:func:`overread.training.ct_eval.evaluate_cohort`'s, run
    at the score floor, ``metrics["score_floor"]``): each half way between the lowest
    score kept and the next lower one (:func:`overread.training.ct_eval.threshold_for_fp`)."""
    from overread.training.ct_eval import threshold_for_fp

    floor = float(metrics.get("score_floor", 0.0))
    out: dict[str, float] = {}
    for name, rate in (NODULE_FP_RATES if rates is None else rates).items():
        threshold = threshold_for_fp(metrics["detection"], rate, floor=floor)
        if threshold is None:
            raise ConfigError(f"no score keeps the false positives at or below {rate:g} per scan")
        out[name] = threshold
    return out


#: How the points are chosen, as the manifest and card record it.
POINTS_RULE = (
    "half way between the lowest nodule score with at most "
    + ", ".join(f"{rate:g} FP/scan ({name})" for name, rate in NODULE_FP_RATES.items())
    + " on the cohort's FROC and the next lower score"
)


def check_cad_target(package_dir: str | Path) -> Manifest:
    """The manifest of the ``blob-cad`` package at ``package_dir``, refused (a
    ``ConfigError``) when it is not one or cannot be written."""
    import os

    from overread.models.package import _parse_manifest

    root = Path(package_dir)
    manifest = _parse_manifest(root)
    spec = manifest.volume
    if spec is None or spec.postprocess != "blob-cad":
        raise ConfigError(f"{package_dir}: not a blob-cad package")
    if not os.access(root, os.W_OK) or not os.access(root / "manifest.json", os.W_OK):
        raise ConfigError(f"{package_dir}: cannot be written (read-only)")
    return manifest


def write_operating_points(
    package_dir: str | Path,
    points: dict[str, float],
    *,
    cohort: str,
    metrics: dict[str, Any],
    held_out: dict[str, Any] | None = None,
    key: bytes | None = None,
) -> Manifest:
    """Set the nodule operating points ``points`` of the CAD package at ``package_dir``
    (the floor, :data:`FLOOR_POINT`, kept at the package's lowest nodule threshold; the
    lung's threshold under every name), record ``cohort`` and the figures at each point
    (and ``held_out``: ``{"cohort": ..., "figures": {name: figures}}`` measured on
    another cohort, when given) in the manifest's ``training`` and its card's
    ``## Operating points`` section, and hash and sign it again with ``key``. A failure
    to write is a ``ConfigError`` and leaves the package as it was."""
    from overread.models.ct_cad import operating_points_section
    from overread.models.package import resign_package
    from overread.training.ct_eval import figures_at

    manifest = check_cad_target(package_dir)
    spec = manifest.volume
    assert spec is not None
    current = manifest.operating_points
    floor = min(current.get(spec.nodule_label, {}).values(), default=0.0)
    if any(t < floor for t in points.values()):
        raise ConfigError(f"an operating point below the score floor {floor}")
    nodule = {**points, FLOOR_POINT: floor}
    lung = current.get(spec.lung_label, {}).get(manifest.default_operating_point, 0.5)
    record: dict[str, Any] = {
        "cohort": cohort,
        "rule": POINTS_RULE,
        "figures": {name: figures_at(metrics["detection"], t) for name, t in points.items()},
    }
    if held_out is not None:
        record["held_out"] = held_out
    training = dict(manifest.training)
    training["operating_points"] = record
    card = Path(package_dir) / "MODEL_CARD.md"
    old = card.read_text(encoding="utf-8") if card.is_file() else None
    try:
        if old is not None:
            section = operating_points_section(
                record, default=manifest.default_operating_point, floor=floor
            )
            _write_atomic(card, replace_section(old, "## Operating points", section))
        try:
            return resign_package(
                package_dir,
                key=key,
                operating_points={
                    spec.lung_label: dict.fromkeys(nodule, lung),
                    spec.nodule_label: nodule,
                },
                training=training,
            )
        except BaseException:
            if old is not None:
                _write_atomic(card, old)  # the card the hashes still name
            raise
    except OSError as exc:
        raise ConfigError(f"{package_dir}: cannot write the operating points: {exc}") from None


def _write_atomic(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with its ``heading`` section (to the next heading of the same level or
    the end) replaced by ``section`` (which starts with ``heading``), or ``section``
    appended when it has none; the text after that section is kept."""
    level = heading.split(" ", 1)[0] + " "
    lines = text.rstrip("\n").split("\n")
    try:
        start = lines.index(heading)
    except ValueError:
        return "\n".join(lines) + "\n\n" + section.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    after = lines[end:]
    out = lines[:start] + section.rstrip("\n").split("\n")
    if after:
        out += ["", *after]
    return "\n".join(out) + "\n"


__all__ = [
    "FLOOR_POINT",
    "NODULE_FP_RATES",
    "POINTS_RULE",
    "TREE_SETTINGS",
    "CandidateSet",
    "check_cad_target",
    "cohort_candidates",
    "fit_cad",
    "fit_cad_trees",
    "fit_trees",
    "nodule_operating_points",
    "replace_section",
    "source_lung",
    "write_operating_points",
]
