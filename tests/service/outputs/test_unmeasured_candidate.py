"""An unmeasured candidate at or above the operating point (the nodule finding
INDETERMINATE, no region): the SR, its de-identified export and the CLI text say so,
never "no nodule found"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from tests.inference.ct_series import SPACING, chest_volume, write_series

from overread.inference.volume import unmeasured_warning
from overread.results import Decision, FindingResult, ModelRef, Prediction
from overread.service.exporters import export_deidentifier
from overread.service.outputs.volume import (
    UNMEASURED_SUMMARY,
    build_volume_outputs,
    is_generated_warning,
    volume_summary,
)

from .conftest import dciodvfy_errors

MODEL = ModelRef("ct-nodule-cad", "1.1.0", "ab" * 32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    root = tmp_path_factory.mktemp("ct")
    paths = write_series(root / "series", chest_volume((6, 48, 48), SPACING, []), SPACING)
    return [pydicom.dcmread(p) for p in paths]


def _prediction(decision: Decision, positive: bool, warnings: list[str]) -> Prediction:
    finding = FindingResult(
        label="nodule",
        probability=0.8,
        positive=positive,
        threshold=0.5,
        decision=decision,
        operating_point="balanced",
    )
    return Prediction(
        path="series",
        ok=True,
        model=MODEL,
        findings=[finding],
        warnings=warnings,
        regions=[],
        task="detection",
    )


def _texts(items: object) -> list[str]:
    """Every TEXT item's value in a content tree, depth first."""
    found: list[str] = []
    for item in items or []:  # type: ignore[attr-defined]
        if getattr(item, "ValueType", None) == "TEXT":
            found.append(str(item.TextValue))
        found.extend(_texts(getattr(item, "ContentSequence", None)))
    return found


def test_an_indeterminate_finding_without_regions_is_never_no_nodule_found(
    sources: list[Dataset], tmp_path: Path
) -> None:
    warning = unmeasured_warning(1, 0.8)
    prediction = _prediction(Decision.INDETERMINATE, True, [warning])
    assert "no nodule found" not in volume_summary(prediction)
    assert UNMEASURED_SUMMARY in volume_summary(prediction)
    [sr] = build_volume_outputs(prediction, sources, None, {})
    texts = _texts(sr.ContentSequence)
    summary = " ".join(texts)
    assert "no nodule found" not in summary and UNMEASURED_SUMMARY in summary
    assert f"Warning: {warning}" in texts
    # The measurement group says what it is, not "no nodule".
    ids = [t for t in texts if t.startswith("ct-nodule-cad ") and t != "ct-nodule-cad 1.1.0"]
    assert ids == ["ct-nodule-cad unmeasured candidate, indeterminate"], texts
    if shutil.which("dciodvfy") is not None:
        path = tmp_path / "sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
    # A de-identified export keeps the warning (fixed words and numbers) and the summary.
    assert is_generated_warning(warning)
    out = export_deidentifier("site-secret", ("clean-structured-content",))(sr).dataset
    kept = _texts(out.ContentSequence)
    assert f"Warning: {warning}" in kept
    assert any(UNMEASURED_SUMMARY in t for t in kept)


def test_a_negative_finding_without_regions_is_still_no_nodule_found() -> None:
    prediction = _prediction(Decision.NEGATIVE, False, [])
    assert "no nodule found" in volume_summary(prediction)
    assert UNMEASURED_SUMMARY not in volume_summary(prediction)


def test_the_unmeasured_warning_keeps_no_header_text() -> None:
    assert is_generated_warning(unmeasured_warning(3, 0.51234))
    assert not is_generated_warning(unmeasured_warning(3, 0.5).replace("3", "1.2.840.3", 1))


def test_the_cli_text_prints_the_findings_decision(capsys: pytest.CaptureFixture[str]) -> None:
    from overread.cli.predict_series import print_volume

    warning = unmeasured_warning(1, 0.8)
    print_volume(_prediction(Decision.INDETERMINATE, True, [warning]), [])
    out = capsys.readouterr().out
    assert "nodules: none" in out
    assert "nodule: indeterminate (score 0.800, operating point balanced)" in out
