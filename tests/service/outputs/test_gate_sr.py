"""The SR says what the input gate decided: "not analysed" (a valid TID 1500 document
without findings), a flag, or a result outside the model's intended use."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from overread.results import FindingResult, GateVerdict, ModelRef, Prediction
from overread.service.outputs import build_not_analysed_sr, build_study_sr, gate_text

from .conftest import dciodvfy_errors

MODEL = ModelRef("cxr-default", "1.1.0", "ab" * 32)
REFUSED = GateVerdict("refuse", ("view position LL is not accepted (accepts PA, AP)",))


def _texts(dataset: Dataset) -> list[str]:
    out = []
    for item in dataset.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out.extend(_texts(item))
    return out


def test_a_not_analysed_study_gets_a_valid_sr_saying_why(
    dx_chest_header: Dataset, tmp_path: Path
) -> None:
    refused = Prediction(path=None, ok=False, model=MODEL, gate=REFUSED)
    sr = build_not_analysed_sr([(refused, dx_chest_header)])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    reread = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    text = " ".join(_texts(reread))
    assert "not analysed" in text and "Not analysed: view position LL is not accepted" in text
    assert "p=" not in text  # no finding is reported


def test_a_not_analysed_re_read_supersedes_the_sr_sent_before(
    dx_chest_header: Dataset, tmp_path: Path
) -> None:
    """A re-read that analyses nothing (a grown study the gate now refuses whole)
    replaces the SR that went out: its report names it in Predecessor Documents."""
    refused = Prediction(path=None, ok=False, model=MODEL, gate=REFUSED)
    earlier = build_not_analysed_sr([(refused, dx_chest_header)])
    sr = build_not_analysed_sr([(refused, dx_chest_header)], predecessors=[earlier])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    [study] = pydicom.dcmread(path).PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    assert [str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence] == [
        str(earlier.SOPInstanceUID)
    ]


def test_an_overridden_or_flagged_result_says_so_beside_its_findings(
    dx_chest_header: Dataset, tmp_path: Path
) -> None:
    finding = FindingResult("Pneumothorax", 0.8, True, 0.1, 0.5)
    overridden = Prediction(
        path=None,
        ok=True,
        model=MODEL,
        findings=[finding],
        gate=GateVerdict("refuse", REFUSED.reasons, 3.2, True),
        outside_intended_use=True,
    )
    sr = build_study_sr([(overridden, dx_chest_header)])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert any("Outside the model's intended use" in t for t in _texts(sr))
    flagged = Prediction(
        path=None, ok=True, model=MODEL, findings=[finding], gate=GateVerdict("flag", ("odd",))
    )
    assert gate_text([flagged]) == "Input gate flag (analysed): odd."
    passed = Prediction(path=None, ok=True, model=MODEL, findings=[finding], gate=GateVerdict())
    assert gate_text([passed]) == ""
    assert not any("Input gate" in t for t in _texts(build_study_sr([(passed, dx_chest_header)])))


def test_a_partly_refused_study_names_the_image_left_out(
    dx_chest_header: Dataset, tmp_path: Path
) -> None:
    analysed = Prediction(
        path=None,
        ok=True,
        model=MODEL,
        findings=[FindingResult("Pneumothorax", 0.8, True, 0.1, 0.5)],
        gate=GateVerdict(),
    )
    left_out = Prediction(path=None, ok=False, model=MODEL, gate=REFUSED)
    sr = build_study_sr([(analysed, dx_chest_header)], not_analysed=[left_out])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert any("Not analysed: view position LL is not accepted" in t for t in _texts(sr))
    # ... and the worklist says so too.
    from overread.results import ResultSummary
    from overread.triage.intake import study_gate

    gate = study_gate(ResultSummary(instances=(analysed, left_out)))
    assert gate.analysis == "analysed"
    assert gate.note.startswith("partly analysed, some images not analysed: view position LL")
