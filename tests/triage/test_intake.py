"""Triage from the gateway's stored Result: merged findings over a study's images."""

from __future__ import annotations

from typing import Any

import pytest

from overread.errors import ConfigError
from overread.results import Decision, FindingResult, ModelRef, Prediction
from overread.service.db import Database, Result
from overread.triage import (
    StudyContext,
    TriageConfig,
    dicom_age_years,
    get_item,
    merge_findings,
    triage_result,
)

from .conftest import NOW, F


def Pred(
    path: str,
    ok: bool = True,
    error: str | None = None,
    findings: list[FindingResult] | None = None,
) -> Prediction:
    return Prediction(
        path=path,
        ok=ok,
        error=error,
        findings=findings or [],
        model=ModelRef("cxr-default", "1.0.0", "0" * 64),
    )


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("052W", 52 * 7 / 365.25),
        ("010D", 10 / 365.25),
        ("", None),
        (None, None),
        ("45", None),
        ("045X", None),
    ],
)
def test_dicom_age(value: str | None, years: float | None) -> None:
    result = dicom_age_years(value)
    assert result == (None if years is None else pytest.approx(years))


def test_merge_takes_the_most_probable_image_per_label() -> None:
    pa = [F("Pneumothorax", 0.3, False, 0.6), F("Edema", 0.8, True, 0.1)]
    lateral = [F("Pneumothorax", 0.7, True, 0.2), F("Edema", float("nan")), F("Fracture", 0.1)]
    merged = {f.label: f for f in merge_findings([pa, lateral])}
    assert set(merged) == {"Pneumothorax", "Edema", "Fracture"}
    assert (merged["Pneumothorax"].probability, merged["Pneumothorax"].threshold_proximity) == (
        0.7,
        0.2,
    )
    assert merged["Edema"].probability == 0.8 and merged["Edema"].positive
    # Positive if any image was positive, even when the most probable image was not.
    merged = {
        f.label: f
        for f in merge_findings(
            [[F("Edema", 0.6, True, threshold=0.55)], [F("Edema", 0.65, False, threshold=0.7)]]
        )
    }
    assert merged["Edema"].positive and merged["Edema"].probability == 0.65


def test_merge_keeps_the_strongest_decision_and_the_codes() -> None:
    code = ("SCT", "36118008", "Pneumothorax")
    pa = [
        FindingResult("Pneumothorax", 0.48, False, 0.9, 0.5, Decision.INDETERMINATE, codes=[code]),
        FindingResult("Edema", 0.2, False, 0.1, 0.5, Decision.NEGATIVE),
    ]
    lateral = [
        FindingResult("Pneumothorax", 0.3, False, 0.4, 0.5, Decision.NEGATIVE, codes=[code]),
        FindingResult("Edema", 0.45, False, 0.8, 0.5, Decision.INDETERMINATE),
    ]
    merged = {f.label: f for f in merge_findings([pa, lateral])}
    # An indeterminate finding just below its threshold stays indeterminate.
    assert merged["Pneumothorax"].decision is Decision.INDETERMINATE
    assert merged["Pneumothorax"].codes == (code,)
    assert merged["Edema"].decision is Decision.INDETERMINATE
    assert not merged["Edema"].positive
    # Positive outranks indeterminate, whichever image is the more probable.
    positive = [FindingResult("Edema", 0.55, True, 0.5, 0.5, Decision.POSITIVE)]
    (edema,) = merge_findings([[FindingResult("Edema", 0.6, True, 0.9, 0.5, "refer")], positive])
    assert edema.decision is Decision.POSITIVE and edema.probability == 0.6


def test_triage_result_from_the_gateways_summary(db: Database) -> None:
    predictions: list[Any] = [
        Pred("store/a.dcm", findings=[F("Pneumothorax", 0.2), F("Edema", 0.4)]),
        Pred("store/b.dcm", ok=False, error="unreadable"),
        Pred("store/c.dcm", findings=[F("Pneumothorax", 0.85, True), F("Edema", 0.1)]),
    ]
    with db.session() as session:
        result = Result(
            job_id=1,
            study_instance_uid="1.2.3",
            model_name="cxr-default",
            model_version="1.0.0",
            summary={
                "alias": "cxr-default",
                "instances": [p.to_summary_dict() for p in predictions],
                "sop_instance_uids": ["1.2.3.1", "1.2.3.2", "1.2.3.3"],
            },
        )
        session.add(result)
        session.flush()
        item, alerts = triage_result(
            session,
            result,
            StudyContext("ED", dicom_age_years("081Y"), NOW),
            TriageConfig(),
            now=NOW,
        )
        assert [a.finding for a in alerts] == ["Pneumothorax"]
        assert item.sop_instance_uid == "1.2.3.1" and item.path == "store/a.dcm"
        assert (item.model_name, item.model_version) == ("cxr-default", "1.0.0")
    with db.session() as session:
        item = get_item(session, "1.2.3")
        stored = {f["label"]: f["probability"] for f in item.findings}
        assert stored == {"Pneumothorax": 0.85, "Edema": 0.4}
        assert {t["name"] for t in item.breakdown} >= {"finding:Pneumothorax", "department", "age"}


def test_result_with_no_successful_image_is_refused(db: Database) -> None:
    with db.session() as session:
        result = Result(
            job_id=2,
            study_instance_uid="9.9",
            model_name="m",
            model_version="1",
            summary={"instances": [Pred("x.dcm", ok=False).to_summary_dict()]},
        )
        with pytest.raises(ConfigError, match=r"study 9\.9: no successful prediction"):
            triage_result(session, result, StudyContext(), TriageConfig(), now=NOW)
