"""Patient-level splits, k-fold, held-out sites, and the leakage check.

A patient's images look alike (same anatomy, same devices, often the same
findings across follow-ups). If one of them is in training and another in test,
the test set measures recognition of the patient rather than of the finding,
and AUC is inflated; hence every split here keeps a patient's images together,
and :func:`check_leakage` refuses splits that do not.

Stratification: each patient gets one stratum, the rarest label positive in any
of their images (or "none"), so rare findings are spread over the splits in
proportion instead of by luck.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from overread.data.table import LabelTable
from overread.errors import DatasetError


class PatientLeakageError(DatasetError):
    """A patient's images are in more than one split."""


def patient_strata(table: LabelTable, min_patients: int = 2) -> pd.Series:
    """One stratum per patient: the rarest label positive in any of their images.

    Labels positive in fewer than ``min_patients`` patients cannot be spread over
    splits and are not used as strata. Returns a Series indexed by patient_id.
    """
    frame = table.frame
    positive = (frame[table.labels] == 1.0).groupby(frame["patient_id"], sort=True).any()
    per_label = positive.sum(axis=0)
    usable = [label for label in table.labels if per_label[label] >= min_patients]
    strata = pd.Series("none", index=positive.index, dtype=object)
    # Assign from the most common label to the rarest: the rarest one wins.
    for label in sorted(usable, key=lambda name: -int(per_label[name])):
        strata[positive[label].to_numpy()] = label
    return strata


def _validate_fractions(fractions: Sequence[float]) -> npt.NDArray[np.float64]:
    values = np.asarray(fractions, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2 or (values < 0).any() or values.sum() <= 0:
        raise DatasetError(
            f"split fractions must be two or more non-negative numbers, got {fractions}"
        )
    normalised: npt.NDArray[np.float64] = values / values.sum()
    return normalised


def patient_split(
    table: LabelTable,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    *,
    stratify: bool = True,
) -> tuple[LabelTable, ...]:
    """Split a table by patient into ``len(fractions)`` tables.

    Patients (not images) are shuffled with ``seed`` within each stratum and
    dealt out in the given proportions, so every split gets its share of each
    rare finding and no patient is in two splits. Fractions are of patients;
    image counts follow.

    Returns
    -------
    tuple of LabelTable
        One per fraction, in order (``train, val, test`` for the default).
    """
    shares = _validate_fractions(fractions)
    rng = np.random.default_rng(seed)
    if stratify:
        strata = patient_strata(table)
    else:
        strata = pd.Series("all", index=pd.Index(sorted(table.frame["patient_id"].unique())))
    assignment: dict[object, int] = {}
    # Carry rounding remainders from stratum to stratum so totals match fractions.
    carry = np.zeros(len(shares))
    for _name, members in strata.groupby(strata, sort=True):
        patients = members.index.to_numpy().copy()
        rng.shuffle(patients)
        wanted = shares * len(patients) + carry
        counts = np.floor(wanted).astype(int)
        left = len(patients) - counts.sum()
        order = np.argsort(-(wanted - counts), kind="stable")
        counts[order[:left]] += 1
        carry = wanted - counts
        bounds = np.concatenate(([0], np.cumsum(counts)))
        for split, (lo, hi) in enumerate(itertools.pairwise(bounds.tolist())):
            for patient in patients[lo:hi]:
                assignment[patient] = split
    split_of_row = table.frame["patient_id"].map(assignment).to_numpy()
    parts = tuple(table.take(np.flatnonzero(split_of_row == k)) for k in range(len(shares)))
    check_leakage(*parts)
    return parts


def patient_kfold(
    table: LabelTable, k: int = 5, seed: int = 0, *, stratify: bool = True
) -> list[tuple[LabelTable, LabelTable]]:
    """K (train, validation) pairs with each patient in exactly one validation fold.

    Uses scikit-learn's StratifiedGroupKFold on the patient strata of
    :func:`patient_strata` (GroupKFold when ``stratify`` is False).
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if k < 2:
        raise DatasetError(f"k-fold needs k >= 2, got {k}")
    groups = table.frame["patient_id"].to_numpy()
    if table.n_patients < k:
        raise DatasetError(f"{table.n_patients} patient(s) cannot fill {k} folds")
    x = np.zeros(len(table))
    if stratify:
        strata = patient_strata(table, min_patients=k)
        y = table.frame["patient_id"].map(strata).to_numpy()
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(x, y, groups)
    else:
        folds = GroupKFold(n_splits=k).split(x, None, groups)
    out = []
    for train_idx, val_idx in folds:
        pair = (table.take(np.sort(train_idx)), table.take(np.sort(val_idx)))
        check_leakage(*pair, names=("train", "validation"))
        out.append(pair)
    return out


def site_split(
    table: LabelTable, holdout_sites: Sequence[str], *, site_column: str = "site"
) -> tuple[LabelTable, LabelTable]:
    """Split off the images of held-out sites as an external test set.

    A patient seen at a held-out site goes to the external set with all of their
    images, including those from other sites, so the two sets share no patient.

    Returns
    -------
    internal, external
    """
    if site_column not in table.frame.columns:
        raise DatasetError(
            f"table has no {site_column!r} column to hold sites out "
            f"(columns: {', '.join(map(str, table.frame.columns))})"
        )
    sites = table.frame[site_column].astype(str)
    unknown = sorted(set(holdout_sites) - set(sites.unique()))
    if unknown:
        raise DatasetError(
            f"held-out site(s) not in the data: {', '.join(unknown)} "
            f"(sites: {', '.join(sorted(sites.unique()))})"
        )
    held_patients = set(table.frame.loc[sites.isin(list(holdout_sites)), "patient_id"])
    external = table.frame["patient_id"].isin(held_patients).to_numpy()
    parts = table.take(np.flatnonzero(~external)), table.take(np.flatnonzero(external))
    check_leakage(*parts, names=("internal", "external"))
    return parts


def check_leakage(*splits: LabelTable, names: Sequence[str] | None = None) -> None:
    """Raise :class:`PatientLeakageError` if any patient is in two splits.

    The message names one such patient, the two splits, and how many patients
    overlap in all.
    """
    if names is None:
        defaults = ("train", "validation", "test")
        names = defaults if len(splits) == 3 else [f"split {i}" for i in range(len(splits))]
    if len(names) != len(splits):
        raise DatasetError(f"{len(names)} names for {len(splits)} splits")
    seen: dict[object, int] = {}
    for index, split in enumerate(splits):
        patients = pd.unique(split.frame["patient_id"])
        clash = [p for p in patients if p in seen]
        if clash:
            first = clash[0]
            raise PatientLeakageError(
                f"patient {first} is in both {names[seen[first]]} and {names[index]} "
                f"({len(clash)} patient(s) overlap): splits must be made by patient"
            )
        for patient in patients:
            seen[patient] = index


__all__ = [
    "PatientLeakageError",
    "check_leakage",
    "patient_kfold",
    "patient_split",
    "patient_strata",
    "site_split",
]
