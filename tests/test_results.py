"""The typed result border: decisions, findings, predictions and stored summaries."""

from __future__ import annotations

import json

import pytest

from overread.errors import OverreadError
from overread.results import (
    Decision,
    FindingResult,
    GateVerdict,
    ModelRef,
    Prediction,
    ResultSummary,
    StudyHeader,
)


def test_decision_wire_values_and_the_legacy_refer() -> None:
    assert [d.value for d in Decision] == ["positive", "indeterminate", "negative"]
    assert Decision.parse("refer") is Decision.INDETERMINATE
    assert Decision.parse("REFER") is Decision.INDETERMINATE
    assert Decision.parse("indeterminate") is Decision.INDETERMINATE
    assert Decision.parse(Decision.POSITIVE) is Decision.POSITIVE
    with pytest.raises(OverreadError, match="unknown decision 'maybe'"):
        Decision.parse("maybe")


def test_a_finding_without_a_decision_takes_its_flags() -> None:
    assert FindingResult("Edema", 0.7, True, 0.1, 0.5).decision is Decision.POSITIVE
    assert FindingResult("Edema", 0.2, False, 0.1, 0.5).decision is Decision.NEGATIVE
    assert FindingResult("Edema", 0.49, False, 0.9, 0.5, "refer").decision is (
        Decision.INDETERMINATE
    )


def test_stored_findings_that_say_refer_still_read() -> None:
    stored = {
        "label": "Pneumothorax",
        "probability": 0.51,
        "positive": True,
        "uncertainty": 0.97,
        "threshold": 0.5,
        "decision": "refer",
        "codes": [["SCT", "36118008", "Pneumothorax"]],
    }
    finding = FindingResult.from_dict(stored)
    assert finding.decision is Decision.INDETERMINATE
    assert finding.codes == (("SCT", "36118008", "Pneumothorax"),)
    assert finding.threshold_proximity == 0.97
    # New output writes the new wire values; "uncertainty" is now "threshold_proximity".
    expected = {**stored, "decision": "indeterminate", "threshold_proximity": 0.97}
    del expected["uncertainty"]
    assert finding.to_summary_dict() == expected


def _prediction() -> Prediction:
    return Prediction(
        path="store/a.dcm",
        ok=True,
        model=ModelRef("cxr-default", "1.1.0", "ab" * 32, runtime="onnx", precision="int8"),
        findings=[
            FindingResult("Pneumothorax", 0.93, True, 0.03, 0.5, Decision.POSITIVE, "balanced"),
            FindingResult("Support Devices", 0.4, False, None, 0.5),
        ],
        timings={"read": 0.01, "inference": 0.02},
    )


def test_prediction_forms() -> None:
    prediction = _prediction()
    assert list(prediction.to_dict()) == [
        "path",
        "ok",
        "error",
        "model",
        "findings",
        "study_instance_uid",
        "sop_instance_uid",
        "timings",
        "warnings",
        "gate",
        "outside_intended_use",
    ]
    assert list(prediction.to_dict()["findings"][0]) == [
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
    ]
    summary = prediction.to_summary_dict()
    assert summary["model"] == {"name": "cxr-default", "version": "1.1.0", "sha256": "ab" * 32}
    assert list(summary["findings"][0]) == [
        "label",
        "probability",
        "positive",
        "threshold_proximity",
        "threshold",
        "decision",
        "codes",
    ]
    assert summary["findings"][1]["threshold_proximity"] is None
    assert list(prediction.findings[0].to_worklist_dict()) == [
        "label",
        "probability",
        "positive",
        "threshold_proximity",
        "threshold",
        "decision",
    ]
    # The worklist keeps the three-state decision, so its pages never show an
    # indeterminate call as positive.
    indeterminate = prediction.findings[0].with_values(decision="indeterminate")
    stored = FindingResult.from_dict(indeterminate.to_worklist_dict())
    assert stored.decision.value == "indeterminate"


def test_result_summary_round_trips_exactly() -> None:
    stored = {
        "alias": "cxr-default",
        "instances": [
            _prediction().to_summary_dict(),
            {
                "path": "store/b.dcm",
                "ok": False,
                "error": "unreadable",
                "model": {"name": "cxr-default", "version": "1.1.0", "sha256": "ab" * 32},
                "findings": [],
                "timings": {"read": 0.5},
            },
        ],
        "sop_instance_uids": ["1.2.3.1", "1.2.3.2"],
        "study": StudyHeader("1.2.3", "PID-1", "Doe^Jane", "", "20260105", "ACC1").to_dict(),
        "timings": {"read": 0.51, "model_total": 0.2, "artifacts": 0.1},
    }
    stored = json.loads(json.dumps(stored))
    summary = ResultSummary.from_dict(stored)
    assert summary.to_dict() == stored
    assert [i for i, _ in summary.usable()] == [0]
    assert summary.sop_instance_uid(1) == "1.2.3.2" and summary.sop_instance_uid(5) == ""
    assert summary.study is not None and summary.study.patient_id == "PID-1"


def test_a_summary_without_a_study_header_or_readable_findings() -> None:
    summary = ResultSummary.from_dict(
        {
            "instances": [
                {
                    "path": "a.dcm",
                    "ok": True,
                    "findings": [
                        {"label": "Edema", "probability": None},
                        {"label": "", "probability": 0.3},
                        {"label": "Fracture", "probability": 0.2, "positive": False},
                    ],
                }
            ]
        }
    )
    assert summary.study is None and "study" not in summary.to_dict()
    (prediction,) = summary.instances
    assert [f.label for f in prediction.findings] == ["Fracture"]
    assert prediction.findings[0].threshold_proximity is None
    assert prediction.findings[0].decision is Decision.NEGATIVE


def test_a_stored_finding_with_a_bad_decision_or_code_is_still_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good_code = ["SCT", "36118008", "Pneumothorax"]
    stored = {
        "instances": [
            {
                "path": "a.dcm",
                "ok": True,
                "findings": [
                    {
                        "label": "Pneumothorax",
                        "probability": 0.8,
                        "positive": True,
                        "decision": "bogus",
                        "codes": [["SCT", "36118008"], "SCT", good_code, None],
                    },
                    {"label": "Edema", "probability": 0.1, "positive": False, "decision": 7},
                    {"label": "Fracture", "probability": 0.2, "codes": "SCT|1|x"},
                ],
            }
        ]
    }
    with caplog.at_level("WARNING", logger="overread.results"):
        summary = ResultSummary.from_dict(stored)
    pneumothorax, edema, fracture = summary.instances[0].findings
    assert pneumothorax.decision is Decision.POSITIVE
    assert pneumothorax.codes == (tuple(good_code),)
    assert edema.decision is Decision.NEGATIVE
    assert fracture.codes == ()
    messages = [r.getMessage() for r in caplog.records]
    assert any("unknown stored decision 'bogus'" in m for m in messages)
    assert any("unknown stored decision 7" in m for m in messages)
    assert sum("is not a triple" in m for m in messages) == 3
    assert any("are not a list" in m for m in messages)
    with pytest.raises(OverreadError, match="unknown decision"):
        FindingResult("Edema", 0.1, False, decision="bogus")


def test_an_unknown_threshold_is_stored_as_null() -> None:
    finding = FindingResult.from_dict({"label": "Edema", "probability": 0.3, "threshold": None})
    assert finding.known_threshold is None
    assert finding.to_worklist_dict()["threshold"] is None
    assert FindingResult.from_dict(finding.to_worklist_dict()).known_threshold is None


def test_trust_evidence_and_gate_round_trip_through_the_stored_summary() -> None:
    finding = FindingResult(
        "Pneumothorax",
        0.7,
        True,
        0.4,
        0.5,
        entropy=0.88,
        mutual_information=0.05,
        conformal_set="both",
        trust_score=0.6,
        map_concentration=0.5,
        deletion_drop=0.7,
    )
    gate = GateVerdict("refuse", ("view position LL is not accepted",), 3.2, overridden=True)
    prediction = Prediction(
        path="a.dcm",
        ok=True,
        model=ModelRef("m", "1"),
        findings=[finding],
        gate=gate,
        outside_intended_use=True,
    )
    back = Prediction.from_summary_dict(json.loads(json.dumps(prediction.to_summary_dict())))
    assert back.findings == [finding]
    assert back.gate == gate and not back.gate.refused and back.outside_intended_use
    assert finding.with_values(trust_score=None).trust_score is None
    assert finding.with_values(probability=0.2).entropy == 0.88
    # Evidence not computed stays out of the stored forms but is always in predict --json.
    plain = FindingResult("Edema", 0.1, False, 0.1, 0.5)
    assert "entropy" not in plain.to_summary_dict() and plain.to_dict()["entropy"] is None
    assert "gate" not in Prediction(path="b", ok=True, model=ModelRef("m", "1")).to_summary_dict()


def test_unknown_gate_status_and_conformal_set() -> None:
    with pytest.raises(OverreadError, match="unknown gate status"):
        GateVerdict("maybe")
    with pytest.raises(OverreadError, match="unknown conformal set"):
        FindingResult("Edema", 0.1, False, conformal_set="sometimes")
    # Stored values that name nothing are read so the result stays shown.
    assert GateVerdict.from_dict({"status": "maybe", "reasons": "odd"}).status == "flag"
    stored = {"label": "Edema", "probability": 0.1, "conformal_set": "sometimes"}
    assert FindingResult.from_dict(stored).conformal_set is None
    assert GateVerdict("refuse", ("a", "b")).refused
    assert GateVerdict("refuse", ("a", "b")).reason == "a; b"


def test_prediction_warnings_are_kept_in_the_stored_summary() -> None:
    prediction = _prediction()
    prediction.warnings.append("the large airways found are 28.9% of the lung and airways")
    data = json.loads(json.dumps(prediction.to_summary_dict()))
    assert data["warnings"] == ["the large airways found are 28.9% of the lung and airways"]
    assert Prediction.from_summary_dict(data).warnings == prediction.warnings
    summary = ResultSummary.from_dict({"instances": [data]})
    assert summary.to_dict()["instances"][0]["warnings"] == prediction.warnings
    # A summary stored before (no key) still reads, without warnings.
    del data["warnings"]
    assert Prediction.from_summary_dict(data).warnings == []
    assert "warnings" not in _prediction().to_summary_dict()


def test_a_region_score_just_above_its_threshold_is_not_stored_below_it() -> None:
    from overread.results import Region

    threshold = 0.49999925  # a threshold half way between two scores
    # At or above it (a reported nodule) yet 0.499999 to 6 decimals; below it yet 0.5.
    for value in (0.4999993, 0.4999996 - 0.0000004, 0.4999997, 0.123456789):
        region = Region(
            label="nodule",
            index=1,
            score=value,
            volume_mm3=1.0,
            longest_diameter_mm=5.0,
            mean_hu=20.0,
            solid_fraction=1.0,
            density="solid",
            category="2",
            centre_mm=(0.0, 0.0, 0.0),
            box_mm=(0.0, 0.0, 0.0, 1.0, 1.0, 1.0),
            box_voxels=(0, 0, 0, 1, 1, 1),
        )
        stored = json.loads(json.dumps(region.to_dict()))["score"]
        assert (stored >= threshold) == (value >= threshold), value
        assert Region.from_dict(region.to_dict()).score == value
