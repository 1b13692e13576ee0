"""The header-only readers: typed tags of a file or a received instance, no pixels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from overread.errors import InvalidDicomError, InvalidUidError
from overread.imaging import (
    ImageMetadata,
    metadata_from_dataset,
    read_dataset,
    read_instance,
    read_metadata,
)

_HEADER = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19610203",
    "PatientSex": "F",
    "PatientAge": "063Y",
    "IssuerOfPatientID": "HOSP",
    "AccessionNumber": "ACC42",
    "StudyDate": "20260102",
    "StudyDescription": "XR CHEST 2 VIEWS",
    "SeriesDescription": "CHEST PA",
    "DerivationDescription": "Edema heatmap from model x",
    "InstitutionName": "Northgate General",
    "InstitutionalDepartmentName": "Emergency",
    "RequestingService": "ED",
    "Modality": "DX",
    "BodyPartExamined": "CHEST",
    "ViewPosition": "PA",
}


@pytest.fixture
def dx(write_dicom: Callable[..., Path]) -> Callable[..., Path]:
    """Write a small 16-bit DX with the header above (attributes override it)."""

    def _write(**attrs: object) -> Path:
        pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        return write_dicom(pixels, **{**_HEADER, **attrs})

    return _write


def test_read_metadata_gives_the_tags_the_service_and_ui_use(
    dx: Callable[..., Path], tmp_path: Path
) -> None:
    path = dx()
    meta = read_metadata(path)
    assert isinstance(meta, ImageMetadata)
    assert meta.patient_id == "TEST001"
    assert meta.patient_name == "Doe^Jane"
    assert meta.patient_birth_date == "19610203"
    assert meta.patient_age == "063Y"
    assert meta.issuer_of_patient_id == "HOSP"
    assert meta.accession_number == "ACC42"
    assert meta.study_description == "XR CHEST 2 VIEWS"
    assert meta.series_description == "CHEST PA"
    assert meta.derivation_description == "Edema heatmap from model x"
    assert meta.institution_name == "Northgate General"
    assert meta.institutional_department_name == "Emergency"
    assert meta.requesting_service == "ED"
    assert (meta.modality, meta.body_part, meta.view_position) == ("DX", "CHEST", "PA")
    assert (meta.rows, meta.columns) == (64, 64)
    assert meta.source_path == str(path)
    # The same header as the one read from a dataset already in hand.
    assert meta == metadata_from_dataset(pydicom.dcmread(path), path)


def test_read_metadata_stops_before_the_pixels(dx: Callable[..., Path], tmp_path: Path) -> None:
    path = dx()
    whole = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: whole.rindex(b"\xe0\x7f\x10\x00")])  # no Pixel Data at all
    assert read_metadata(cut).sop_instance_uid == read_metadata(path).sop_instance_uid


def test_read_metadata_refuses_a_file_that_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_bytes(b"not an image at all" * 20)
    with pytest.raises(InvalidDicomError, match=r"notes\.dcm"):
        read_metadata(path)
    with pytest.raises(OSError):
        read_metadata(tmp_path / "missing.dcm")


def test_read_dataset_keeps_the_pixels_unless_told_not_to(
    dx: Callable[..., Path], tmp_path: Path
) -> None:
    path = dx()
    assert "PixelData" in read_dataset(path)
    assert "PixelData" not in read_dataset(path, pixels=False)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(InvalidDicomError):
        read_dataset(junk)


# -- received instances: the ingest check ------------------------------------------------
def test_read_instance_gives_the_same_header_as_read_metadata(
    dx: Callable[..., Path], tmp_path: Path
) -> None:
    path = dx()
    header = read_instance(path.read_bytes())
    assert header == dataclasses.replace(read_metadata(path), source_path=None)
    assert header.transfer_syntax == "1.2.840.10008.1.2.1"


def test_read_instance_finds_every_truncation_of_the_pixel_data(dx: Callable[..., Path]) -> None:
    data = dx().read_bytes()
    header = read_instance(data)
    assert header.modality == "DX" and header.sop_instance_uid
    pixel_start = data.rindex(b"\xe0\x7f\x10\x00") + 12  # explicit VR OW: 12-byte header
    for cut in (pixel_start, pixel_start + 1, len(data) - 1):
        with pytest.raises(InvalidDicomError, match=r"truncated|not a readable"):
            read_instance(data[:cut])


def test_read_instance_parses_elements_after_the_pixel_data(
    dx: Callable[..., Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(dx())
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)  # Data Set Trailing Padding
    path = tmp_path / "padded.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert read_instance(data).sop_instance_uid == ds.SOPInstanceUID
    # A Pixel Data length that runs into the trailing element is still caught.
    with pytest.raises(InvalidDicomError):
        read_instance(data[:-30])


def test_read_instance_reads_implicit_vr_files(dx: Callable[..., Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(dx())
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    data = path.read_bytes()
    assert read_instance(data).transfer_syntax == ImplicitVRLittleEndian
    with pytest.raises(InvalidDicomError, match="truncated"):
        read_instance(data[:-100])


def test_read_instance_requires_the_identifying_uids(dx: Callable[..., Path]) -> None:
    data = dx(SeriesInstanceUID="").read_bytes()
    with pytest.raises(InvalidDicomError, match=r"part 3: missing required.*SeriesInstanceUID"):
        read_instance(data, source="part 3")
    with pytest.raises(InvalidDicomError, match="not a readable DICOM"):
        read_instance(b"\x00" * 200)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
@pytest.mark.parametrize(
    ("keyword", "reason"),
    [
        ("StudyInstanceUID", "not only digits and dots"),
        ("SeriesInstanceUID", "not only digits and dots"),
        ("SOPInstanceUID", "not only digits and dots"),
        ("SOPClassUID", "not only digits and dots"),
    ],
)
def test_read_instance_refuses_malformed_identifying_uids(
    dx: Callable[..., Path], tmp_path: Path, keyword: str, reason: str
) -> None:
    ds = pydicom.dcmread(dx())
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        setattr(ds, keyword, "../../../../etc/passwd")
        path = tmp_path / "bad.dcm"
        ds.save_as(path)
    finally:
        pydicom.config.settings.writing_validation_mode = previous
    with pytest.raises(InvalidUidError, match=f"part 2: {keyword} .* not a valid UID") as caught:
        read_instance(path.read_bytes(), source="part 2")
    assert caught.value.comment == f"invalid {keyword} ({reason})"
    # The instance's own UIDs are given for a failure report only when well formed.
    assert caught.value.sop_instance_uid == (
        "" if keyword == "SOPInstanceUID" else ds.SOPInstanceUID
    )
    assert caught.value.sop_class_uid == ("" if keyword == "SOPClassUID" else ds.SOPClassUID)
