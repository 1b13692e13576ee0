"""One SR per study: a PA and a lateral view give one TID 1500 report with per-image groups."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.results import ModelRef, Prediction
from overread.service.outputs import build_study_sr, study_prediction, summary_text

from .conftest import dciodvfy_errors, make_prediction


def _lateral(pa: Dataset) -> Dataset:
    lateral = copy.deepcopy(pa)
    lateral.SOPInstanceUID = hd.UID()
    lateral.ViewPosition = "LL"
    return lateral


def _lateral_prediction() -> Prediction:
    """The lateral view sees an effusion the PA view scores lower, and no pneumothorax."""
    prediction = make_prediction(with_heatmaps=False)
    cls = prediction.findings[0].__class__
    prediction.findings = [
        cls(f.label, 0.81, True, 0.1, f.threshold)
        if f.label == "Pleural Effusion"
        else cls(f.label, 0.2, False, 0.1, f.threshold)
        if f.label == "Pneumothorax"
        else f
        for f in prediction.findings
    ]
    return prediction


def test_two_views_give_one_valid_sr_with_a_group_per_image_and_finding(
    tmp_path: Path, dx_chest_header: Dataset
) -> None:
    pa, lateral = dx_chest_header, _lateral(dx_chest_header)
    pa_prediction, lateral_prediction = make_prediction(False), _lateral_prediction()
    sr = build_study_sr([(pa_prediction, pa), (lateral_prediction, lateral)])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    back = hd.sr.srread(path)
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence}
    assert referenced == {pa.SOPInstanceUID, lateral.SOPInstanceUID}
    groups = back.content.get_image_measurement_groups()
    assert len(groups) == 2 * 14
    per_image: dict[str, dict[str, float]] = {}
    for group in groups:
        (source,) = group.source_images
        probability = next(m for m in group.get_measurements() if m.name.value == "122157")
        per_image.setdefault(source.referenced_sop_instance_uid, {})[group.finding_type.meaning] = (
            probability.value
        )
        view = pa.ViewPosition if source.referenced_sop_instance_uid == pa.SOPInstanceUID else "LL"
        assert str(group.tracking_identifier).endswith(view)
    assert per_image[pa.SOPInstanceUID]["Pneumothorax"] == pytest.approx(0.93)
    assert per_image[lateral.SOPInstanceUID]["Pneumothorax"] == pytest.approx(0.2)
    assert per_image[lateral.SOPInstanceUID]["Pleural effusion"] == pytest.approx(0.81)
    # The in-memory document is the one written.
    assert len(sr.content.get_image_measurement_groups()) == 28


def test_the_study_summary_takes_each_findings_strongest_view(dx_chest_header: Dataset) -> None:
    merged = study_prediction([make_prediction(False), _lateral_prediction()])
    by_label = {f.label: f for f in merged.findings}
    assert by_label["Pneumothorax"].probability == pytest.approx(0.93)  # the PA view
    assert by_label["Pleural Effusion"].probability == pytest.approx(0.81)  # the lateral
    text = summary_text(merged)
    assert "possible pneumothorax (p=0.93)" in text
    assert "pleural effusion (p=0.81)" in text


def test_one_image_study_is_the_plain_sr(dx_chest_header: Dataset) -> None:
    sr = build_study_sr([(make_prediction(False), dx_chest_header)])
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 14
    assert str(groups[0].tracking_identifier) == "cxr-default No Finding"


def test_predictions_of_two_models_are_refused(dx_chest_header: Dataset) -> None:
    other = make_prediction(False)
    other.model = ModelRef("cxr-other", "2.0.0", "ab" * 32)
    with pytest.raises(ServiceError, match="one model"):
        build_study_sr([(make_prediction(False), dx_chest_header), (other, dx_chest_header)])
    with pytest.raises(ServiceError, match="at least one"):
        build_study_sr([])
