"""Patient-level splits: disjoint patients, proportions, strata, k-fold, sites, leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overread.data import (
    LabelTable,
    PatientLeakageError,
    check_leakage,
    patient_kfold,
    patient_split,
    read_labels,
    site_split,
)
from overread.errors import DatasetError


def _table(n_patients: int = 400, seed: int = 0) -> LabelTable:
    """Patients with 1-4 images each; 'Rare' positive in 5% of patients, at 4 sites."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        rare = 1.0 if p % 20 == 0 else 0.0
        for i in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "path": f"p{p}/img{i}.png",
                    "patient_id": f"P{p:04d}",
                    "study_id": f"P{p:04d}/s{i // 2}",
                    "Common": float(rng.random() < 0.4),
                    "Rare": rare,
                    "site": f"site-{p % 4}",
                }
            )
    return LabelTable(frame=pd.DataFrame(rows), labels=["Common", "Rare"], dataset="test")


def _patients(table: LabelTable) -> set[str]:
    return set(table.frame["patient_id"])


def test_split_is_by_patient_and_follows_fractions() -> None:
    table = _table()
    train, val, test = patient_split(table, (0.7, 0.1, 0.2), seed=0)
    assert len(train) + len(val) + len(test) == len(table)
    assert not (_patients(train) & _patients(val) or _patients(train) & _patients(test))
    assert not _patients(val) & _patients(test)
    counts = [len(_patients(s)) for s in (train, val, test)]
    assert counts == [280, 40, 80]
    # Rare finding: 20 patients, spread 14/2/4 by stratification.
    rare = [s.frame.loc[s.frame["Rare"] == 1, "patient_id"].nunique() for s in (train, val, test)]
    assert rare == [14, 2, 4]


def test_split_is_reproducible_and_seed_dependent() -> None:
    table = _table()
    a = patient_split(table, seed=1)
    b = patient_split(table, seed=1)
    c = patient_split(table, seed=2)
    assert [list(s.frame["path"]) for s in a] == [list(s.frame["path"]) for s in b]
    assert _patients(a[2]) != _patients(c[2])
    unstratified = patient_split(table, (0.5, 0.5), seed=0, stratify=False)
    assert [len(_patients(s)) for s in unstratified] == [200, 200]


def test_kfold_each_patient_validated_once() -> None:
    table = _table(200)
    folds = patient_kfold(table, k=5, seed=0)
    assert len(folds) == 5
    seen: list[str] = []
    for train, val in folds:
        assert not _patients(train) & _patients(val)
        assert len(train) + len(val) == len(table)
        seen += sorted(_patients(val))
        assert val.frame.loc[val.frame["Rare"] == 1, "patient_id"].nunique() == 2
    assert sorted(seen) == sorted(_patients(table))
    plain = patient_kfold(table, k=4, stratify=False)
    assert sum(len(_patients(v)) for _, v in plain) == 200
    with pytest.raises(DatasetError):
        patient_kfold(table, k=1)


def test_site_split_moves_whole_patients() -> None:
    table = _table(40)
    # Patient P0000 also has an image at site-3 now: they must go with the held-out site.
    extra = table.frame.iloc[[0]].assign(path="p0/elsewhere.png", site="site-3")
    table = LabelTable(pd.concat([table.frame, extra], ignore_index=True), table.labels)
    internal, external = site_split(table, ["site-3"])
    assert set(external.frame["site"]) == {"site-0", "site-3"}
    assert "P0000" in _patients(external)
    assert set(internal.frame["site"]) == {"site-0", "site-1", "site-2"}
    check_leakage(internal, external)
    with pytest.raises(DatasetError, match="site-9"):
        site_split(table, ["site-9"])


def test_leakage_check_names_the_patient() -> None:
    table = _table(10)
    rows = np.arange(len(table))
    first, second = table.take(rows[: len(rows) // 2 + 1]), table.take(rows[len(rows) // 2 :])
    shared = first.frame["patient_id"].iat[-1]
    with pytest.raises(
        PatientLeakageError, match=f"patient {shared} is in both train and validation"
    ):
        check_leakage(first, second, table.take([]), names=["train", "validation", "test"])


def test_real_chexpert_split_has_no_leakage(txv_dir: Path) -> None:
    table = read_labels("chexpert", txv_dir / "chexpert_train.csv.gz")
    train, val, test = patient_split(table, seed=0)
    check_leakage(train, val, test)
    assert len(train) + len(val) + len(test) == 223_414
    assert train.n_patients + val.n_patients + test.n_patients == table.n_patients
    # Patient fractions match to within one patient per stratum.
    assert abs(test.n_patients / table.n_patients - 0.2) < 0.001
    # A naive image-level split of the same data leaks thousands of patients.
    rng = np.random.default_rng(0)
    order = rng.permutation(len(table))
    naive_train, naive_test = table.take(order[:178_000]), table.take(order[178_000:])
    with pytest.raises(PatientLeakageError):
        check_leakage(naive_train, naive_test, names=["train", "test"])


@settings(max_examples=40, deadline=None)
@given(
    images_per_patient=st.lists(st.integers(1, 6), min_size=3, max_size=60),
    fractions=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4),
    seed=st.integers(0, 2**31),
)
def test_split_properties(images_per_patient: list[int], fractions: list[float], seed: int) -> None:
    rows = []
    for p, count in enumerate(images_per_patient):
        for i in range(count):
            rows.append(
                {
                    "path": f"{p}/{i}",
                    "patient_id": f"P{p}",
                    "study_id": f"P{p}/{i}",
                    "A": float((p * 7 + i) % 5 == 0),
                    "B": float(p % 9 == 0),
                }
            )
    table = LabelTable(pd.DataFrame(rows), ["A", "B"])
    parts = patient_split(table, fractions, seed=seed)
    assert len(parts) == len(fractions)
    assert sorted(path for s in parts for path in s.frame["path"]) == sorted(table.frame["path"])
    check_leakage(*parts)
    n = len(images_per_patient)
    shares = np.asarray(fractions) / sum(fractions)
    counts = np.array([s.n_patients if len(s) else 0 for s in parts])
    # Largest-remainder rounding per stratum, carried over: within a few patients of the target.
    assert np.all(np.abs(counts - shares * n) <= 3)
