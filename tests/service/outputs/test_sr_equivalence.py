"""The SR whose content tree is encoded directly equals, element by element, the one
highdicom built before (kept as ``sr_reference``), apart from what is new in each
document by design: the Tracking Unique Identifiers of its measurement groups and the
dates and times of its creation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from overread.results import Decision, FindingResult, GateVerdict, ModelRef, Prediction
from overread.service import outputs
from overread.service.verification import ReportStatus, Verification

from . import sr_reference
from .conftest import dciodvfy_errors, make_prediction

#: Value representations whose values are the moment of building.
_MOMENTS = {"DA", "TM", "DT"}
_TRACKING_UID = "112040"


def _encoded(sr: Dataset) -> Dataset:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _differences(old: Dataset, new: Dataset, where: str = "") -> list[str]:
    """Where ``new`` differs from ``old``: tags, VRs, values, item counts."""
    found: list[str] = []
    if set(old.keys()) != set(new.keys()):
        return [f"{where}: tags {sorted(set(old.keys()) ^ set(new.keys()))}"]
    tracking = (
        "ConceptNameCodeSequence" in old
        and old.ConceptNameCodeSequence[0].get("CodeValue") == _TRACKING_UID
    )
    for tag in sorted(old.keys()):
        a, b = old[tag], new[tag]
        here = f"{where}/{a.keyword or tag}"
        if a.VR != b.VR:
            found.append(f"{here}: VR {a.VR} != {b.VR}")
        elif a.VR == "SQ":
            if len(a.value) != len(b.value):
                found.append(f"{here}: {len(a.value)} items != {len(b.value)}")
                continue
            for index, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                found += _differences(x, y, f"{here}[{index}]")
        elif a.VR in _MOMENTS or (tracking and a.keyword == "UID"):
            if bool(a.value) != bool(b.value):
                found.append(f"{here}: present in one only")
        elif a.value != b.value:
            found.append(f"{here}: {a.value!r} != {b.value!r}")
    return found


def _same(build: Callable[[Any], Dataset], tmp_path: Path) -> Dataset:
    """Build with both builders (same instance UIDs); assert the documents are equal."""
    identity = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    old = _encoded(build(sr_reference)(**identity))
    new_sr = build(outputs)(**identity)
    new = _encoded(new_sr)
    assert _differences(old, new) == []
    assert _differences(old.file_meta, new.file_meta) == []
    # What differs by design is there in both, and new in each.
    uids = [
        (x.UID, y.UID)
        for x, y in zip(_items(old), _items(new), strict=True)
        if "UID" in x and x.ConceptNameCodeSequence[0].CodeValue == _TRACKING_UID
    ]
    assert uids and all(a != b for a, b in uids)
    # Valid, and read back by highdicom, from the file and in memory.
    path = tmp_path / "sr.dcm"
    new_sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = hd.sr.srread(path)
    assert isinstance(back, hd.sr.ComprehensiveSR)
    reference = hd.sr.ComprehensiveSR.from_dataset(old)
    assert len(back.content.get_image_measurement_groups()) == len(
        reference.content.get_image_measurement_groups()
    )
    assert len(new_sr.content.get_image_measurement_groups()) == len(
        reference.content.get_image_measurement_groups()
    )
    return new


def _items(dataset: Dataset) -> list[Dataset]:
    out: list[Dataset] = []
    for entry in dataset.get("ContentSequence", []):
        out.append(entry)
        out += _items(entry)
    return out


def _findings() -> list[FindingResult]:
    """Positive, negative, indeterminate, with and without each piece of evidence."""
    return [
        FindingResult(
            "Pneumothorax",
            0.93,
            True,
            0.1,
            0.5,
            entropy=0.31,
            mutual_information=0.02,
            conformal_set="positive",
            trust_score=0.82,
            map_concentration=0.61,
            deletion_drop=0.44,
        ),
        FindingResult("Cardiomegaly", 0.47, False, 0.97, 0.45, decision=Decision.INDETERMINATE),
        FindingResult("Edema", 0.12, False, None, 0.4, conformal_set="negative"),
        FindingResult("Pleural Effusion", 0.55, True, 0.6, 0.45, conformal_set="both"),
        FindingResult("Support Devices", 1.0, True, 0.0, 0.5, trust_score=0.0),
        FindingResult("No Finding", 0.0, False, 0.0, 1.0 / 3.0, conformal_set="empty"),
        # A label of another model's head, coded from its package and locally.
        FindingResult("Rib lesion", 0.2, False, 0.3, 0.25, codes=[("SCT", "263204007", "Rib")]),
        FindingResult("Pleural thickening (left)", 0.6, True, 0.2, 0.5),
    ]


def _lateral(header: Dataset) -> Dataset:
    lateral = copy.deepcopy(header)
    lateral.SOPInstanceUID = generate_uid()
    lateral.ViewPosition = "LL"
    return lateral


def test_fourteen_findings_of_the_default_model(dx_chest_header: Dataset, tmp_path: Path) -> None:
    prediction = make_prediction(False)
    new = _same(
        lambda m: lambda **k: m.build_study_sr([(prediction, dx_chest_header)], **k), tmp_path
    )
    assert len(_items(new)) > 200


def test_every_decision_and_evidence(dx_chest_header: Dataset, tmp_path: Path) -> None:
    prediction = Prediction(
        path=None, ok=True, model=ModelRef("cxr-default", "1.0.0", "3f" * 32), findings=_findings()
    )
    _same(lambda m: lambda **k: m.build_study_sr([(prediction, dx_chest_header)], **k), tmp_path)


def test_uncalibrated_model_without_checksum(dx_chest_header: Dataset, tmp_path: Path) -> None:
    model = ModelRef("onboarded", "0.3", "", calibrated=False)
    prediction = Prediction(path=None, ok=True, model=model, findings=_findings())
    _same(lambda m: lambda **k: m.build_study_sr([(prediction, dx_chest_header)], **k), tmp_path)


@pytest.mark.parametrize("status", [ReportStatus.FINAL, ReportStatus.AMENDED])
def test_verified_by_a_reader(
    status: ReportStatus, dx_chest_header: Dataset, tmp_path: Path
) -> None:
    prediction = Prediction(
        path=None, ok=True, model=ModelRef("cxr-default", "1.0.0", "3f" * 32), findings=_findings()
    )
    changed = {"Cardiomegaly": Decision.POSITIVE} if status is ReportStatus.AMENDED else {}
    verification = Verification(
        status=status,
        observer_name="Reader^Rita",
        organization="Test Hospital",
        verified_at=datetime(2026, 12, 5, 8, 30, tzinfo=UTC),
        decisions=changed,
        note="Checked against the prior.",
    )
    _same(
        lambda m: (
            lambda **k: m.build_study_sr(
                [(prediction, dx_chest_header)], verification=verification, **k
            )
        ),
        tmp_path,
    )


def test_two_views_a_refused_image_a_site_calibration_and_a_predecessor(
    dx_chest_header: Dataset, tmp_path: Path
) -> None:
    model = ModelRef("cxr-default", "1.0.0", "3f" * 32)
    pa = Prediction(path=None, ok=True, model=model, findings=_findings())
    lateral = Prediction(path=None, ok=True, model=model, findings=_findings()[:3])
    refused = Prediction(
        path=None, ok=False, model=model, gate=GateVerdict("refuse", ("not a chest image",))
    )
    predecessor = Dataset()
    predecessor.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    predecessor.SOPInstanceUID = generate_uid()
    predecessor.StudyInstanceUID = dx_chest_header.StudyInstanceUID
    predecessor.SeriesInstanceUID = generate_uid()
    calibration = {"scope": "site", "site": "north", "method": "isotonic"}
    readings = [(pa, dx_chest_header), (lateral, _lateral(dx_chest_header))]
    _same(
        lambda m: (
            lambda **k: m.build_study_sr(
                readings,
                not_analysed=[refused],
                predecessors=[predecessor],
                calibration=calibration,
                institution_name="Test Hospital",
                institutional_department_name="Radiology",
                **k,
            )
        ),
        tmp_path,
    )


def test_one_prediction_over_two_images(dx_chest_header: Dataset, tmp_path: Path) -> None:
    prediction = make_prediction(False)
    sources = [dx_chest_header, _lateral(dx_chest_header)]
    _same(lambda m: lambda **k: m.build_sr(prediction, sources, **k), tmp_path)


def test_a_study_not_analysed(dx_chest_header: Dataset, tmp_path: Path) -> None:
    model = ModelRef("cxr-default", "1.1.0", "ab" * 32)
    refused = Prediction(
        path=None, ok=False, model=model, gate=GateVerdict("refuse", ("view LL not accepted",))
    )
    _same(
        lambda m: lambda **k: m.build_not_analysed_sr([(refused, dx_chest_header)], **k), tmp_path
    )


def test_text_outside_ascii_in_the_sources_character_set(
    dx_chest_header: Dataset, tmp_path: Path
) -> None:
    header = copy.deepcopy(dx_chest_header)
    header.SpecificCharacterSet = "ISO_IR 192"
    header.PatientName = "Müller^Zoë"
    model = ModelRef("modèle-thorax", "2.0-β", "3f" * 32)
    finding = FindingResult(
        "Épanchement", 0.7, True, 0.4, 0.5, codes=[("99X", "EP", "Épanchement")]
    )
    prediction = Prediction(path=None, ok=True, model=model, findings=[finding])
    verification = Verification(
        status=ReportStatus.FINAL,
        observer_name="Gödel^Kurt",
        organization="Hôpital Nord",
        verified_at=datetime(2026, 12, 5, 8, 30, tzinfo=UTC),
        note="Vérifié.",
    )
    new = _same(
        lambda m: (
            lambda **k: m.build_study_sr([(prediction, header)], verification=verification, **k)
        ),
        tmp_path,
    )
    texts = [str(i.TextValue) for i in _items(new) if "TextValue" in i]
    assert "modèle-thorax Épanchement" in texts


def test_encoded_in_implicit_vr_as_an_association_may_ask(dx_chest_header: Dataset) -> None:
    """A peer that accepts only Implicit VR Little Endian gets the same content: the raw
    tree is parsed and encoded again, as for a document read from a file."""
    from pynetdicom.dsutils import decode, encode

    sr = outputs.build_study_sr([(make_prediction(False), dx_chest_header)])
    implicit = encode(sr, True, True)
    explicit = encode(sr, False, True)
    assert implicit is not None and explicit is not None and implicit != explicit
    back = decode(BytesIO(implicit), True, True)
    assert _differences(decode(BytesIO(explicit), False, True), back) == []
    assert len(_items(back)) > 200
