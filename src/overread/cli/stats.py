"""``overread stats``: the statistical tests on their own, from a CSV.

``overread stats delong --csv F --truth COL --a COL --b COL --json`` prints
``{"auc_a", "auc_b", "difference", "ci", "z", "p"}``; ``mcnemar``, ``kappa``,
``icc``, ``auc`` and ``sample-size`` work the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from overread.cli.app import app
from overread.errors import EvaluationError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# numpy and pandas are imported inside the commands, not at CLI start.

stats_app = typer.Typer(
    help="Statistical tests: DeLong, McNemar, kappa, ICC, MRMC, sample size.", no_args_is_help=True
)
app.add_typer(stats_app, name="stats")
sample_app = typer.Typer(help="Sample size for accuracy studies.", no_args_is_help=True)
stats_app.add_typer(sample_app, name="sample-size")


def _frame(csv: Path, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    try:
        frame = pd.read_csv(csv)
    except FileNotFoundError:
        raise EvaluationError(f"{csv}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{csv}: cannot read CSV ({exc})") from None
    except OSError as exc:  # a folder, or a path through a file
        raise EvaluationError(f"{csv}: cannot read CSV ({exc.strerror or exc})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(
            f"{csv}: no column {missing[0]!r} (have: {', '.join(map(str, frame.columns))})"
        )
    return frame


def _numeric(frame: pd.DataFrame, column: str, csv: Path, drop_missing: bool = False) -> np.ndarray:
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(frame[column], errors="coerce")
    if values.isna().any() and not drop_missing:
        row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
        raise EvaluationError(f"{csv}: column {column!r} line {row}: missing or non-numeric value")
    return values.to_numpy(dtype=np.float64)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    from overread.evaluation.report import json_safe

    if as_json:
        typer.echo(json.dumps(json_safe(result)))
        return
    for key, value in result.items():
        if isinstance(value, float):
            typer.echo(f"{key}: {value:.6g}")
        elif isinstance(value, list):
            typer.echo(
                f"{key}: "
                + ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
            )
        else:
            typer.echo(f"{key}: {value}")


_CSV = typer.Option(..., "--csv", help="CSV file with one row per case.")
_JSON = typer.Option(False, "--json", help="Print one JSON object.")


@stats_app.command("delong")
def delong_command(
    csv: Path = _CSV,
    truth: str = typer.Option(..., "--truth", help="0/1 truth column."),
    a: str = typer.Option(..., "--a", help="Score column of reader/model A."),
    b: str = typer.Option(..., "--b", help="Score column of reader/model B."),
    as_json: bool = _JSON,
) -> None:
    """DeLong's test for two correlated AUCs (same cases)."""
    from overread.evaluation.delong import delong_test

    frame = _frame(csv, [truth, a, b])
    result = delong_test(
        _numeric(frame, truth, csv), _numeric(frame, a, csv), _numeric(frame, b, csv)
    )
    _emit(result.as_dict(), as_json)


@stats_app.command("auc")
def auc_command(
    csv: Path = _CSV,
    truth: str = typer.Option(..., "--truth", help="0/1 truth column."),
    score: str = typer.Option(..., "--score", help="Score column."),
    as_json: bool = _JSON,
) -> None:
    """AUC with DeLong's standard error and 95% CI."""
    from overread.evaluation.delong import delong_ci

    frame = _frame(csv, [truth, score])
    est = delong_ci(_numeric(frame, truth, csv), _numeric(frame, score, csv))
    _emit(
        {
            "auc": est.auc,
            "se": est.se,
            "ci": list(est.ci),
            "n_positive": est.n_positive,
            "n_negative": est.n_negative,
        },
        as_json,
    )


@stats_app.command("mcnemar")
def mcnemar_command(
    csv: Path = _CSV,
    a: str = typer.Option(..., "--a", help="0/1 column of reader A (a call, or correctness)."),
    b: str = typer.Option(..., "--b", help="0/1 column of reader B."),
    truth: str | None = typer.Option(
        None, "--truth", help="If given, compare correctness (A == truth vs B == truth)."
    ),
    exact: bool = typer.Option(
        True, "--exact/--chi2", help="Exact binomial test, or the chi-square."
    ),
    correction: bool = typer.Option(
        True, "--correction/--no-correction", help="Continuity correction (chi-square only)."
    ),
    as_json: bool = _JSON,
) -> None:
    """McNemar's test for two readers on the same cases."""
    from overread.evaluation.agreement import mcnemar, paired_table

    frame = _frame(csv, [a, b] + ([truth] if truth else []))
    xa, xb = _numeric(frame, a, csv), _numeric(frame, b, csv)
    if truth:
        t = _numeric(frame, truth, csv)
        xa, xb = (xa == t).astype(float), (xb == t).astype(float)
    table = paired_table(xa, xb)
    result = mcnemar(table, exact=exact, correction=correction).as_dict()
    result["table"] = table.astype(int).tolist()
    _emit(result, as_json)


@stats_app.command("kappa")
def kappa_command(
    csv: Path = _CSV,
    raters: str = typer.Option(
        ..., "--raters", help="Comma-separated rating columns: 2 for Cohen, 3+ for Fleiss."
    ),
    weights: str = typer.Option("none", "--weights", help="Cohen only: none, linear or quadratic."),
    as_json: bool = _JSON,
) -> None:
    """Cohen's (weighted) kappa for two raters, Fleiss' kappa for more."""
    from overread.evaluation.agreement import cohens_kappa, fleiss_kappa

    columns = [c.strip() for c in raters.split(",") if c.strip()]
    if len(columns) < 2:
        raise EvaluationError("--raters needs at least two columns")
    frame = _frame(csv, columns)
    if frame[columns].isna().any().any():
        raise EvaluationError(
            f"{csv}: kappa needs every rater's rating for every case (blank found)"
        )
    if len(columns) == 2:
        result = cohens_kappa(
            frame[columns[0]].to_numpy(), frame[columns[1]].to_numpy(), weights=weights
        )
        _emit({"method": f"Cohen ({weights})", **result.as_dict()}, as_json)
        return
    if weights != "none":
        raise EvaluationError(
            "--weights applies to Cohen's kappa (two raters); Fleiss' kappa is unweighted"
        )
    import numpy as np

    values = frame[columns].astype(str).to_numpy()
    categories = np.unique(values)
    counts = np.stack([(values == c).sum(axis=1) for c in categories], axis=1)
    _emit(
        {
            "method": "Fleiss",
            "kappa": fleiss_kappa(counts),
            "raters": len(columns),
            "categories": categories.tolist(),
        },
        as_json,
    )


@stats_app.command("icc")
def icc_command(
    csv: Path = _CSV,
    raters: str = typer.Option(
        ..., "--raters", help="Comma-separated rating columns (one per rater)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Shrout-Fleiss intraclass correlations (all six forms) with 95% CIs."""
    import numpy as np

    from overread.evaluation.agreement import icc

    columns = [c.strip() for c in raters.split(",") if c.strip()]
    frame = _frame(csv, columns)
    matrix = np.column_stack([_numeric(frame, c, csv) for c in columns])
    result = icc(matrix)
    _emit({str(form): {"icc": r.value, "ci": list(r.ci)} for form, r in result.items()}, as_json)


@stats_app.command("mrmc")
def mrmc_command(
    csv: Path = _CSV,
    reader: str = typer.Option("reader", "--reader", help="Reader column."),
    modality: str = typer.Option("modality", "--modality", help="Modality (treatment) column."),
    case: str = typer.Option("case", "--case", help="Case id column."),
    truth: str = typer.Option("truth", "--truth", help="0/1 truth column (per case)."),
    score: str = typer.Option("score", "--score", help="Rating or score column."),
    covariance: str = typer.Option("delong", "--covariance", help="delong or jackknife."),
    as_json: bool = _JSON,
) -> None:
    """Obuchowski-Rockette MRMC test of equal reader-averaged AUCs (long-format CSV)."""
    import numpy as np
    import pandas as pd

    from overread.evaluation.mrmc import obuchowski_rockette

    frame = _frame(csv, [reader, modality, case, truth, score])
    modalities = sorted(frame[modality].astype(str).unique())
    readers = sorted(frame[reader].astype(str).unique())
    cases = sorted(frame[case].astype(str).unique())
    frame = frame.assign(
        _m=frame[modality].astype(str), _r=frame[reader].astype(str), _c=frame[case].astype(str)
    )
    if frame.duplicated(["_m", "_r", "_c"]).any():
        raise EvaluationError(f"{csv}: a (modality, reader, case) appears more than once")
    full = pd.MultiIndex.from_product([modalities, readers, cases])
    cube = frame.set_index(["_m", "_r", "_c"])[score].reindex(full)
    if cube.isna().any():
        raise EvaluationError(
            f"{csv}: every reader must score every case in every modality (fully crossed)"
        )
    per_case = frame.groupby("_c")[truth].agg(["min", "max"]).reindex(cases)
    if (per_case["min"] != per_case["max"]).any():
        raise EvaluationError(f"{csv}: a case has different truth values on different rows")
    scores = cube.to_numpy(dtype=np.float64).reshape(len(modalities), len(readers), len(cases))
    result = obuchowski_rockette(
        per_case["min"].to_numpy(dtype=np.float64), scores, covariance=covariance
    )
    out = result.as_dict()
    out["modalities"] = modalities
    out["readers"] = readers
    _emit(out, as_json)


@sample_app.command("two-proportions")
def two_proportions_command(
    p1: float = typer.Option(..., "--p1", help="Expected proportion (e.g. sensitivity) in arm 1."),
    p2: float = typer.Option(..., "--p2", help="Expected proportion in arm 2."),
    alpha: float = typer.Option(0.05, "--alpha", help="Two-sided significance level."),
    power: float = typer.Option(0.8, "--power", help="Power."),
    ratio: float = typer.Option(1.0, "--ratio", help="n2 / n1."),
    as_json: bool = _JSON,
) -> None:
    """Cases per arm (positives, for a sensitivity) to detect p1 vs p2."""
    from overread.evaluation.sample_size import two_proportions

    n1, n2 = two_proportions(p1, p2, alpha, power, ratio)
    _emit({"n1": n1, "n2": n2, "p1": p1, "p2": p2, "alpha": alpha, "power": power}, as_json)


@sample_app.command("auc-precision")
def auc_precision_command(
    auc: float = typer.Option(..., "--auc", help="Expected AUC."),
    half_width: float = typer.Option(..., "--half-width", help="Wanted 95% CI half-width."),
    prevalence: float = typer.Option(..., "--prevalence", help="Share of positives in the study."),
    as_json: bool = _JSON,
) -> None:
    """Positives and negatives to estimate an AUC to a given precision (Hanley-McNeil)."""
    from overread.evaluation.sample_size import auc_precision

    n_pos, n_neg = auc_precision(auc, half_width, prevalence)
    _emit({"n_positive": n_pos, "n_negative": n_neg, "auc": auc, "half_width": half_width}, as_json)


@sample_app.command("non-inferiority")
def non_inferiority_command(
    p_new: float = typer.Option(
        ..., "--p-new", help="Expected proportion with the new reader/model."
    ),
    p_ref: float = typer.Option(..., "--p-ref", help="Expected proportion with the reference."),
    margin: float = typer.Option(..., "--margin", help="Non-inferiority margin (absolute)."),
    alpha: float = typer.Option(0.025, "--alpha", help="One-sided significance level."),
    power: float = typer.Option(0.8, "--power", help="Power."),
    as_json: bool = _JSON,
) -> None:
    """Cases per arm to show non-inferiority of two proportions."""
    from overread.evaluation.sample_size import non_inferiority_proportions

    n = non_inferiority_proportions(p_new, p_ref, margin, alpha, power)
    _emit({"n_per_arm": n, "p_new": p_new, "p_ref": p_ref, "margin": margin}, as_json)
