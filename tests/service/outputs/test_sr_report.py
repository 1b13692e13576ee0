"""The TID 1500 SR: valid IOD (dciodvfy), readable by DCMTK and highdicom, right content."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.results import Decision, Prediction
from overread.service.outputs import build_sr, finding_concept, summary_text
from overread.service.outputs.codes import LOCAL_SCHEME

from .conftest import dciodvfy_errors, make_prediction, tool_output


@pytest.fixture
def sr_file(tmp_path: Path, prediction: Prediction, dx_chest_header: Dataset) -> Path:
    sr = build_sr(prediction, [dx_chest_header], institution_name="Test Hospital")
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_sr_is_a_valid_comprehensive_sr_iod(sr_file: Path) -> None:
    assert dciodvfy_errors(sr_file) == []


def test_sr_content_tree_reads_back_with_highdicom(
    sr_file: Path, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = hd.sr.srread(sr_file)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert sr.StudyInstanceUID == dx_chest_header.StudyInstanceUID
    assert sr.SeriesInstanceUID != dx_chest_header.SeriesInstanceUID
    assert sr.PatientID == dx_chest_header.PatientID
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == len(prediction.findings) == 14
    by_code = {g.finding_type.value: g for g in groups}
    for finding in prediction.findings:
        concept = finding_concept(finding.label)
        group = by_code[concept.value]
        assert group.finding_type.scheme_designator == concept.scheme
        values = {m.name.meaning: m for m in group.get_measurements()}
        assert values["Probability"].value == pytest.approx(finding.probability)
        assert values["Probability"].unit.value == "{ratio}"
        assert values["Operating point threshold"].value == pytest.approx(finding.threshold)
        if finding.threshold_proximity is None:
            assert "Threshold proximity" not in values
        else:
            assert values["Threshold proximity"].value == pytest.approx(finding.threshold_proximity)
        (decision,) = group.get_qualitative_evaluations()
        assert decision.name.value == concept.value
        assert decision.value.value == ("52101004" if finding.positive else "272519000")
        (source,) = group.source_images
        assert source.referenced_sop_instance_uid == dx_chest_header.SOPInstanceUID
        assert source.referenced_sop_class_uid == dx_chest_header.SOPClassUID

    (observer,) = sr.content.get_observer_contexts()
    attributes = observer.observer_identifying_attributes
    assert attributes.name == "cxr-default"
    assert attributes.manufacturer_name == "overread"
    assert attributes.model_name == "cxr-default 1.0.0"


def test_dsrdump_shows_the_tree_with_codes_model_and_summary(sr_file: Path) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("DCMTK dsrdump is not installed")
    done = tool_output("dsrdump", "+Pc", sr_file)
    # dsrdump checks the Comprehensive SR relationship constraints while reading
    # and warns about (or refuses) invalid content items.
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
    text = done.stdout
    assert '<has obs context CODE:(121005,DCM,"Observer Type")=(121007,DCM,"Device")>' in text
    assert 'CODE:(121058,DCM,"Procedure reported")=(399208008,SCT,"Plain chest X-ray")' in text
    assert 'CODE:(121071,DCM,"Finding")=(36118008,SCT,"Pneumothorax")' in text
    assert 'CODE:(36118008,SCT,"Pneumothorax")=(52101004,SCT,"Present")' in text
    assert 'CODE:(8186001,SCT,"Cardiomegaly")=(52101004,SCT,"Present")' in text
    assert 'CODE:(233604007,SCT,"Pneumonia")=(272519000,SCT,"Absent")' in text
    assert 'NUM:(122157,DCM,"Probability")="0.93" ({ratio},UCUM,"ratio")' in text
    assert 'NUM:(OPTHRESHOLD,99OVERREAD,"Operating point threshold")="0.5"' in text
    assert 'TEXT:(111003,DCM,"Algorithm Version")="1.0.0"' in text
    assert 'CONTAINER:(C0034375,UMLS,"Qualitative Evaluations")' in text
    assert 'TEXT:(121111,DCM,"Summary")="AI second read' in text
    assert "DX image" in text


def test_summary_lists_positives_by_probability_with_caveat(prediction: Prediction) -> None:
    text = summary_text(prediction)
    assert text.startswith("AI second read (cxr-default 1.0.0): possible pneumothorax (p=0.93)")
    assert text.index("pneumothorax") < text.index("cardiomegaly") < text.index("pleural effusion")
    assert "no finding" not in text.lower()
    assert text.endswith("For research use only; not for diagnosis.")


def test_summary_without_positives_says_so() -> None:
    prediction = make_prediction(with_heatmaps=False)
    prediction.findings = [
        f.__class__(f.label, 0.01, False, None, 0.5) for f in prediction.findings
    ]
    assert "no finding above its operating point (14 findings assessed)" in summary_text(prediction)


def test_local_scheme_is_declared(sr_file: Path) -> None:
    sr = hd.sr.srread(sr_file)
    declared = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert LOCAL_SCHEME in declared


def test_refuses_failed_or_invalid_predictions(
    prediction: Prediction, dx_chest_header: Dataset
) -> None:
    prediction.ok = False
    prediction.error = "unsupported transfer syntax"
    with pytest.raises(ServiceError, match="unsupported transfer syntax"):
        build_sr(prediction, [dx_chest_header])

    bad = make_prediction(with_heatmaps=False)
    bad.findings[0] = bad.findings[0].__class__("No Finding", 1.7, True, None, 0.5)
    with pytest.raises(ServiceError, match=r"probability 1\.7"):
        build_sr(bad, [dx_chest_header])

    empty = make_prediction(with_heatmaps=False)
    empty.findings = []
    with pytest.raises(ServiceError, match="no findings"):
        build_sr(empty, [dx_chest_header])


def test_refuses_sources_from_two_studies(
    prediction: Prediction, dx_chest_header: Dataset, cr_small: Dataset
) -> None:
    with pytest.raises(ServiceError, match="2 studies"):
        build_sr(prediction, [dx_chest_header, cr_small])
    with pytest.raises(ServiceError, match="at least one"):
        build_sr(prediction, [])


def test_two_views_are_both_referenced(prediction: Prediction, dx_chest_header: Dataset) -> None:
    lateral = copy.deepcopy(dx_chest_header)
    lateral.SOPInstanceUID = hd.UID()
    lateral.ViewPosition = "LL"
    sr = build_sr(prediction, [dx_chest_header, lateral])
    groups = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_image_measurement_groups()
    referenced = {s.referenced_sop_instance_uid for s in groups[0].source_images}
    assert referenced == {dx_chest_header.SOPInstanceUID, lateral.SOPInstanceUID}


def test_referred_findings_are_undetermined_and_called_out(dx_chest_header: Dataset) -> None:
    prediction = make_prediction(with_heatmaps=False)
    prediction.findings = [
        f.__class__(f.label, 0.49, False, 0.98, 0.5, Decision.INDETERMINATE)
        if f.label == "Atelectasis"
        else f
        for f in prediction.findings
    ]
    sr = hd.sr.ComprehensiveSR.from_dataset(build_sr(prediction, [dx_chest_header]))
    groups = {g.finding_type.meaning: g for g in sr.content.get_image_measurement_groups()}
    (decision,) = groups["Atelectasis"].get_qualitative_evaluations()
    assert (decision.value.value, decision.value.meaning) == ("373068000", "Undetermined")
    text = summary_text(prediction)
    assert (
        "Too close to call, for a radiologist to judge: atelectasis (p=0.49, threshold 0.50)."
        in text
    )


def test_labels_outside_chexpert_use_the_model_packages_code_or_a_local_one(
    dx_chest_header: Dataset,
) -> None:
    prediction = make_prediction(with_heatmaps=False)
    finding_class = prediction.findings[0].__class__
    prediction.findings = [
        finding_class("Nodule", 0.7, True, 0.1, 0.5, codes=(("SCT", "27925004", "Nodule"),)),
        finding_class("Tube malposition", 0.2, False, 0.1, 0.5),
    ]
    sr = hd.sr.ComprehensiveSR.from_dataset(build_sr(prediction, [dx_chest_header]))
    found = {
        (g.finding_type.value, g.finding_type.scheme_designator, g.finding_type.meaning)
        for g in sr.content.get_image_measurement_groups()
    }
    assert found == {
        ("27925004", "SCT", "Nodule"),
        ("TUBEMALPOSITION", LOCAL_SCHEME, "Tube malposition"),
    }


def test_sr_over_a_real_cr_image_is_valid_too(
    tmp_path: Path, prediction: Prediction, cr_small: Dataset
) -> None:
    sr = build_sr(prediction, [cr_small])
    path = tmp_path / "sr_cr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    groups = hd.sr.srread(path).content.get_image_measurement_groups()
    assert groups[0].source_images[0].referenced_sop_class_uid == "1.2.840.10008.5.1.4.1.1.1"


def test_summary_of_a_single_positive_finding_claims_nothing_else() -> None:
    prediction = make_prediction(with_heatmaps=False)
    prediction.findings = [prediction.findings[0].__class__("Pneumothorax", 0.8, True, None, 0.5)]
    assert summary_text(prediction) == (
        "AI second read (cxr-default 1.0.0): possible pneumothorax (p=0.80). "
        "For research use only; not for diagnosis."
    )
