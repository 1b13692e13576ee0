"""``overread evaluate`` (file path) and ``overread stats`` end to end, in-process."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from overread.evaluation import delong_test

LABELS = ["Cardiomegaly", "Edema", "Pneumothorax"]


@pytest.fixture
def prediction_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    n = 400
    ids = [f"img{i:04d}" for i in range(n)]
    patients = [f"p{i // 2:04d}" for i in range(n)]
    truth = (rng.random((n, 3)) < [0.3, 0.2, 0.1]).astype(float)
    scores = 1 / (1 + np.exp(-(rng.normal(size=truth.shape) + 2 * truth - 1)))
    labels = pd.DataFrame(truth, columns=LABELS).astype("Int64")
    labels.loc[:9, "Edema"] = pd.NA  # blank = missing
    labels.insert(0, "id", ids)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    preds = pd.DataFrame(scores, columns=LABELS)
    preds.insert(0, "id", ids)
    preds.to_csv(tmp_path / "pred.csv", index=False)
    groups = pd.DataFrame(
        {
            "id": ids,
            "patient_id": patients,
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(20, 90, n),
            "site": rng.choice(["A", "B", "C"], n),
        }
    )
    groups.to_csv(tmp_path / "groups.csv", index=False)
    return tmp_path / "pred.csv", tmp_path / "labels.csv", tmp_path / "groups.csv"


def _evaluate(
    run_cli: Any, pred: Path, labels: Path, out: Path, *options: object, resamples: int = 50
) -> tuple[int, str, str]:
    """``overread evaluate`` on the two files, with ``options``, into ``out``."""
    return run_cli(  # type: ignore[no-any-return]
        "evaluate",
        "--predictions",
        pred,
        "--labels",
        labels,
        *options,
        "--resamples",
        str(resamples),
        "--out",
        out,
    )


def _label_metrics(out: Path) -> dict[str, Any]:
    """The per-label entries of ``out/metrics.json``."""
    return json.loads((out / "metrics.json").read_text())["labels"]  # type: ignore[no-any-return]


def _set_label(labels: Path, name: str, value: object) -> None:
    """Overwrite one label column of the labels file."""
    frame = pd.read_csv(labels)
    frame[name] = value
    frame.to_csv(labels, index=False)


def test_evaluate_from_files_writes_metrics_and_report(run_cli, prediction_files, tmp_path) -> None:
    pred, labels, groups = prediction_files
    out = tmp_path / "out"
    status, stdout, stderr = _evaluate(
        run_cli,
        pred,
        labels,
        out,
        *("--groups", groups, "--subgroups", "sex,age,site", "--subgroup-resamples", "50"),
        resamples=300,
    )
    assert status == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    truth = pd.read_csv(labels)
    scores = pd.read_csv(pred)
    for name in LABELS:
        entry = metrics["labels"][name]
        known = truth[name].notna()
        assert entry["auc"] == pytest.approx(
            roc_auc_score(truth.loc[known, name], scores.loc[known, name])
        )
        lo, hi = entry["auc_ci"]
        assert lo < entry["auc"] < hi
        assert entry["n_positive"] + entry["n_negative"] == int(known.sum())
        for key in ("threshold", "sensitivity", "specificity", "ece"):
            assert isinstance(entry[key], float)
        assert entry["specificity"] >= 0.9  # default rule: 90% specificity
    assert metrics["labels"]["Edema"]["n_missing"] == 10
    assert metrics["mean_auc"] == pytest.approx(
        np.mean([metrics["labels"][n]["auc"] for n in LABELS])
    )
    assert metrics["n_patients"] == 200
    assert set(metrics["subgroups"]) == {"sex", "age", "site"}
    ages = {m["group"] for m in metrics["subgroups"]["age"]["Edema"]["metrics"]}
    assert ages <= {"0-39", "40-59", "60-79", "80+"}
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 7  # ROC, PR, reliability, confusion, and a forest plot per attribute
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http://" not in html and "https://" not in html
    assert "AUC" in stdout


def test_label_with_one_class_is_null_with_reason(run_cli, prediction_files, tmp_path) -> None:
    pred, labels, _ = prediction_files
    _set_label(labels, "Pneumothorax", 0)
    status, _, stderr = _evaluate(run_cli, pred, labels, tmp_path / "o")
    assert status == 0
    entry = _label_metrics(tmp_path / "o")["Pneumothorax"]
    assert entry["auc"] is None and entry["auc_ci"] == [None, None]
    assert "no positive" in entry["reason"]
    assert "Pneumothorax" in stderr and "each row is treated as its own patient" in stderr


def test_bad_label_value_is_a_one_line_error(run_cli, prediction_files, tmp_path) -> None:
    pred, labels, _ = prediction_files
    frame = pd.read_csv(labels)
    frame["Edema"] = frame["Edema"].astype(object)
    frame.loc[20, "Edema"] = "-1"
    frame.to_csv(labels, index=False)
    status, _, stderr = run_cli(
        "evaluate", "--predictions", pred, "--labels", labels, "--out", tmp_path / "o"
    )
    assert status == 2
    assert stderr.startswith("error: ") and "labels.csv" in stderr and "'Edema'" in stderr
    status, _, stderr = run_cli("evaluate", "--predictions", pred, "--out", tmp_path / "o")
    assert status == 2 and "--labels" in stderr


def test_given_thresholds_are_applied(run_cli, prediction_files, tmp_path) -> None:
    pred, labels, _ = prediction_files
    (tmp_path / "t.json").write_text(json.dumps({"Edema": 0.5}))
    status, _, _ = _evaluate(
        run_cli,
        pred,
        labels,
        tmp_path / "o",
        *("--thresholds", tmp_path / "t.json", "--deployment-prevalence", "0.02"),
    )
    assert status == 0
    entry = _label_metrics(tmp_path / "o")["Edema"]
    assert entry["threshold"] == 0.5 and "given" in entry["threshold_source"]
    assert entry["deployment"]["prevalence"] == 0.02 and entry["deployment"]["ppv"] < entry["ppv"]


def test_thresholds_chosen_on_validation_are_reused_on_test(
    run_cli, prediction_files, tmp_path
) -> None:
    pred, labels, _ = prediction_files
    status, _, _ = _evaluate(run_cli, pred, labels, tmp_path / "val")
    assert status == 0
    chosen = json.loads((tmp_path / "val" / "thresholds.json").read_text())
    assert set(chosen) == set(LABELS)
    thresholds = tmp_path / "val" / "thresholds.json"
    status, _, _ = _evaluate(run_cli, pred, labels, tmp_path / "test", "--thresholds", thresholds)
    assert status == 0
    test_metrics = _label_metrics(tmp_path / "test")
    assert {k: v["threshold"] for k, v in test_metrics.items()} == chosen


@pytest.fixture
def asah_csv(asah, tmp_path) -> Path:
    frame = asah.assign(poor=(asah["outcome"] == "Poor").astype(int))
    path = tmp_path / "asah.csv"
    frame.to_csv(path, index=False)
    return path


def test_stats_delong_json(run_cli, asah_csv, asah) -> None:
    status, stdout, _ = run_cli(
        "stats",
        "delong",
        "--csv",
        asah_csv,
        "--truth",
        "poor",
        "--a",
        "s100b",
        "--b",
        "wfns",
        "--json",
    )
    assert status == 0
    result = json.loads(stdout)
    assert {"auc_a", "auc_b", "difference", "ci", "z", "p"} <= set(result)
    ref = delong_test((asah["outcome"] == "Poor").astype(int), asah["s100b"], asah["wfns"])
    assert result["p"] == pytest.approx(ref.p) and round(result["p"], 5) == 0.02718


def test_stats_errors_name_the_column(run_cli, asah_csv) -> None:
    status, _, stderr = run_cli(
        "stats", "delong", "--csv", asah_csv, "--truth", "nope", "--a", "s100b", "--b", "wfns"
    )
    assert status == 2 and "'nope'" in stderr and str(asah_csv) in stderr


def test_stats_mcnemar_kappa_icc_sample_size(run_cli, tmp_path) -> None:
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"a": rng.integers(0, 2, 80), "b": rng.integers(0, 2, 80), "c": rng.integers(0, 2, 80)}
    )
    frame.to_csv(tmp_path / "r.csv", index=False)
    status, stdout, _ = run_cli(
        "stats", "mcnemar", "--csv", tmp_path / "r.csv", "--a", "a", "--b", "b", "--chi2", "--json"
    )
    assert status == 0
    result = json.loads(stdout)
    assert result["p"] == pytest.approx(sm_mcnemar(np.array(result["table"]), exact=False).pvalue)
    status, stdout, _ = run_cli(
        "stats", "kappa", "--csv", tmp_path / "r.csv", "--raters", "a,b,c", "--json"
    )
    assert status == 0 and json.loads(stdout)["method"] == "Fleiss"
    sf = pd.DataFrame(
        [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
        columns=list("ABCD"),
    )
    sf.to_csv(tmp_path / "sf.csv", index=False)
    status, stdout, _ = run_cli(
        "stats", "icc", "--csv", tmp_path / "sf.csv", "--raters", "A,B,C,D", "--json"
    )
    assert round(json.loads(stdout)["ICC(3,1)"]["icc"], 2) == 0.71
    status, stdout, _ = run_cli(
        "stats", "sample-size", "two-proportions", "--p1", "0.85", "--p2", "0.75", "--json"
    )
    assert json.loads(stdout)["n1"] == 250


def test_stats_mrmc_long_format(run_cli, tmp_path) -> None:
    from overread.evaluation import obuchowski_rockette

    rng = np.random.default_rng(4)
    truth = (rng.random(50) < 0.4).astype(int)
    scores = rng.normal(size=(2, 3, 50)) + truth
    rows = [
        {
            "reader": f"R{r}",
            "modality": f"M{t}",
            "case": f"c{c:02d}",
            "truth": truth[c],
            "score": scores[t, r, c],
        }
        for t in range(2)
        for r in range(3)
        for c in range(50)
    ]
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_csv(tmp_path / "mrmc.csv", index=False)
    status, stdout, err = run_cli("stats", "mrmc", "--csv", tmp_path / "mrmc.csv", "--json")
    assert status == 0, err
    result = json.loads(stdout)
    expected = obuchowski_rockette(truth, scores)
    assert result["p"] == pytest.approx(expected.p)
    assert result["auc"] == pytest.approx(expected.auc.tolist())
    pd.DataFrame(rows[:-1]).to_csv(tmp_path / "bad.csv", index=False)
    status, _, err = run_cli("stats", "mrmc", "--csv", tmp_path / "bad.csv")
    assert status == 2 and "fully crossed" in err


def test_compare_two_prediction_files(run_cli, prediction_files, tmp_path) -> None:
    from statsmodels.stats.multitest import multipletests

    pred, labels, groups = prediction_files
    rng = np.random.default_rng(9)
    a = pd.read_csv(pred)
    b = a.copy()
    b[LABELS] = np.clip(a[LABELS].to_numpy() + rng.normal(scale=0.3, size=(len(a), 3)), 0, 1)
    b = b.sample(frac=1.0, random_state=1)  # row order must not matter
    b.to_csv(tmp_path / "pred_b.csv", index=False)
    status, stdout, err = _evaluate(
        run_cli,
        pred,
        labels,
        tmp_path / "o",
        "--groups",
        groups,
        "--compare",
        tmp_path / "pred_b.csv",
    )
    assert status == 0, err
    comparison = json.loads((tmp_path / "o" / "metrics.json").read_text())["comparison"]
    truth = pd.read_csv(labels)
    b = b.set_index("id").loc[a["id"]]
    p_values = []
    for name in LABELS:
        known = truth[name].notna().to_numpy()
        ref = delong_test(truth.loc[known, name], a.loc[known, name], b.loc[known, name].to_numpy())
        entry = comparison["labels"][name]
        assert entry["p"] == pytest.approx(ref.p) and entry["difference"] == pytest.approx(
            ref.difference
        )
        p_values.append(ref.p)
    holm = multipletests(p_values, method="holm")[1]
    assert [comparison["labels"][n]["p_adjusted"] for n in LABELS] == pytest.approx(list(holm))
    assert "Comparison" in (tmp_path / "o" / "report.html").read_text()
    assert "AUC difference" in stdout


def test_label_without_prediction_is_reported(run_cli, prediction_files, tmp_path) -> None:
    pred, labels, _ = prediction_files
    _set_label(labels, "Fracture", 0)
    status, _, stderr = _evaluate(run_cli, pred, labels, tmp_path / "o", resamples=20)
    assert status == 0
    assert "Fracture" in stderr and "no prediction column" in stderr
    assert "Fracture" not in _label_metrics(tmp_path / "o")
