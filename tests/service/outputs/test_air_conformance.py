"""IHE AI Results (AIR): one test per item of the conformance table in docs/outputs.md.

Each test builds the objects the gateway sends (the TID 1500 SR, the SEG) over a real
DX header and checks one item, written back to bytes and read again, so what is checked
is what a receiving display would read.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from overread.results import Decision, ModelRef, Prediction
from overread.service.outputs import build_seg, build_sr, finding_concept
from overread.service.outputs.codes import LOCAL_SCHEME

from .conftest import dciodvfy_errors


def _written(dataset: Dataset) -> Dataset:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.fixture
def sr(prediction: Prediction, dx_chest_header: Dataset) -> Dataset:
    return _written(build_sr(prediction, [dx_chest_header]))


@pytest.fixture
def report(sr: Dataset) -> hd.sr.ComprehensiveSR:
    return hd.sr.ComprehensiveSR.from_dataset(sr)


def _items(dataset: Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_1_results_are_dicom_objects_of_the_source_study_in_a_new_series(
    sr: Dataset, dx_chest_header: Dataset, tmp_path: Path
) -> None:
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == dx_chest_header.StudyInstanceUID
    assert sr.SeriesInstanceUID != dx_chest_header.SeriesInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"):
        assert sr.get(keyword) == dx_chest_header.get(keyword), keyword
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_2_the_producing_algorithm_is_named_in_general_equipment(
    sr: Dataset, prediction: Prediction
) -> None:
    model = prediction.model
    assert sr.Manufacturer == "overread"
    assert sr.ManufacturerModelName == model.name
    assert sr.SoftwareVersions == model.version
    assert sr.DeviceSerialNumber == model.short_hash


def test_3_contributing_equipment_names_the_ai_as_processing_equipment(
    sr: Dataset, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    items = list(sr.ContributingEquipmentSequence)
    purposes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in items]
    assert purposes[0] == "109101"  # the source image's acquisition equipment
    assert items[0].Manufacturer == dx_chest_header.Manufacturer
    # highdicom lists itself as processing equipment too (it wrote the object).
    (ai,) = [i for i in items if purposes and i.Manufacturer == "overread"]
    assert ai.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert ai.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert ai.Manufacturer == "overread"
    assert ai.ManufacturerModelName == prediction.model.name
    assert prediction.model.version in list(ai.SoftwareVersions)
    assert ai.DeviceSerialNumber == prediction.model.short_hash
    assert len(str(ai.ContributionDateTime)) >= 14
    assert prediction.model.name in ai.ContributionDescription


def test_4_the_observer_is_a_device_observer_identifying_the_model(
    report: hd.sr.ComprehensiveSR, prediction: Prediction
) -> None:
    [container] = report.content.get_observer_contexts()
    device = container.observer_identifying_attributes
    assert container.observer_type.value == "121007"  # DCM Device
    assert device.name == prediction.model.name
    assert device.manufacturer_name == "overread"
    assert prediction.model.version in device.model_name
    assert device.serial_number == prediction.model.short_hash
    assert device.uid  # the same package is always the same device


def test_5_every_measurement_group_carries_algorithm_identification(
    report: hd.sr.ComprehensiveSR, prediction: Prediction
) -> None:
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == len(prediction.findings)
    for group in groups:
        # TID 4019: Algorithm Name (111001), Version (111003), Parameters (111002).
        values: dict[str, list[str]] = {}
        for item in _items(group[0]):
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code in ("111001", "111003", "111002"):
                values.setdefault(code, []).append(str(item.TextValue))
        assert values["111001"] == [prediction.model.name]
        assert values["111003"] == [prediction.model.version]
        assert any(p.startswith("threshold=") for p in values["111002"])


def test_6_every_finding_is_coded_with_a_present_absent_undetermined_evaluation(
    report: hd.sr.ComprehensiveSR, sr: Dataset, prediction: Prediction
) -> None:
    declared = {
        item.CodingSchemeDesignator for item in sr.get("CodingSchemeIdentificationSequence", [])
    }
    evaluations = {"Present": Decision.POSITIVE, "Absent": Decision.NEGATIVE}
    by_code = {g.finding_type.value: g for g in report.content.get_image_measurement_groups()}
    for finding in prediction.findings:
        concept = finding_concept(finding.label)
        group = by_code[concept.value]
        if concept.scheme == LOCAL_SCHEME:
            assert LOCAL_SCHEME in declared
        else:
            assert concept.scheme in ("SCT", "RADLEX", "DCM")
        (decision,) = group.get_qualitative_evaluations()
        meaning = decision.value.meaning
        assert meaning in ("Present", "Absent", "Undetermined")
        assert evaluations.get(meaning, Decision.INDETERMINATE) is finding.decision


def test_7_probabilities_are_numeric_with_ucum_units(
    report: hd.sr.ComprehensiveSR, prediction: Prediction
) -> None:
    for group in report.content.get_image_measurement_groups():
        values = {m.name.meaning: m for m in group.get_measurements()}
        assert values["Probability"].unit.value == "{ratio}"
        assert values["Probability"].unit.scheme_designator == "UCUM"
        assert 0.0 <= values["Probability"].value <= 1.0


def test_8_every_measurement_group_has_a_tracking_identifier_and_uid(
    report: hd.sr.ComprehensiveSR,
) -> None:
    uids = set()
    for group in report.content.get_image_measurement_groups():
        assert group.tracking_identifier
        assert group.tracking_uid
        uids.add(group.tracking_uid)
    assert len(uids) == len(report.content.get_image_measurement_groups())


def test_9_an_ai_result_is_unverified_and_preliminary_until_a_reader_reviews_it(
    sr: Dataset,
) -> None:
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert "VerifyingObserverSequence" not in sr
    # VERIFIED with the reader's name after review: tests/service/test_review_flow.py.


def test_10_the_source_images_are_referenced_from_evidence_library_and_groups(
    sr: Dataset, report: hd.sr.ComprehensiveSR, dx_chest_header: Dataset
) -> None:
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == dx_chest_header.SOPInstanceUID
    assert referenced.ReferencedSOPClassUID == dx_chest_header.SOPClassUID
    image_refs = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in _items(sr)
        if item.get("ValueType") == "IMAGE"
    }
    assert image_refs == {dx_chest_header.SOPInstanceUID}
    for group in report.content.get_image_measurement_groups():
        assert group.source_images, "each finding references the image it was read on"


def test_11_the_document_is_complete_and_dated(sr: Dataset) -> None:
    assert sr.CompletionFlag == "COMPLETE"
    assert len(str(sr.ContentDate)) == 8 and str(sr.ContentTime)


def test_12_segmentations_are_automatic_identify_the_algorithm_and_the_ai(
    dx_chest: Dataset, tmp_path: Path
) -> None:
    model = ModelRef("cxr-ptx-seg", "0.3.0", "5e" * 32)
    rows, cols = dx_chest.Rows, dx_chest.Columns
    mask = np.zeros((rows, cols), dtype=np.uint8)
    mask[rows // 4 : rows // 2, cols // 4 : cols // 2] = 1
    seg = _written(build_seg({"Pneumothorax": mask}, [dx_chest], model))
    (segment,) = seg.SegmentSequence
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == model.name
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == model.version
    processing = [
        i
        for i in seg.ContributingEquipmentSequence
        if i.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        and i.Manufacturer == "overread"
    ]
    assert len(processing) == 1 and processing[0].ManufacturerModelName == model.name
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
