"""De-identification (PS3.15 Basic Profile) on deid-data's DICOM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from overread.errors import ConfigError, InvalidDicomError
from overread.imaging import read
from overread.imaging.deid import PROFILE, Action, Deidentifier, deidentify_file

# The reference reads below use pydicom directly; its warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

deid_data = pytest.importorskip("deid_data")
DEID_FILES = Path(deid_data.__file__).parent / "data"
CT_BRAIN = [DEID_FILES / "humans" / "ctbrain1.dcm", DEID_FILES / "humans" / "ctbrain2.dcm"]
COOKIES = sorted((DEID_FILES / "dicom-cookies").glob("*.dcm"))
BURNED_IN = DEID_FILES / "ultrasounds" / "GREYSCALE_IMAGE.dcm"
CAT = DEID_FILES / "animals" / "cat.dcm"

IDENTIFYING = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "PerformingPhysicianName",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "OtherPatientIDs",
    "PatientAddress",
]


def _identifying_values(ds: pydicom.Dataset) -> set[str]:
    values = set()
    for keyword in IDENTIFYING:
        value = str(ds.get(keyword, "") or "").strip()
        if len(value) >= 5:
            values.add(value)
    for elem in ds.iterall():
        standard = str(elem.value).startswith("1.2.840.10008")
        kind = elem.keyword.endswith("SOPClassUID")  # kinds of object, not identity
        if elem.VR == "UI" and elem.value and not standard and not kind:
            values.add(str(elem.value))
    return values


@pytest.mark.parametrize("path", [*CT_BRAIN, *COOKIES, CAT], ids=lambda p: p.name)
def test_no_identifier_survives_in_the_written_file(path, tmp_path):
    original = pydicom.dcmread(path)
    secrets = _identifying_values(original)
    assert secrets, "the test file should carry identifiers"
    out = tmp_path / "deid.dcm"
    result = deidentify_file(path, out, Deidentifier("site-secret"))
    data = out.read_bytes()
    for value in secrets:
        assert value.encode() not in data, f"{value!r} still present"
    ds = pydicom.dcmread(out)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert result.actions.get("U", 0) >= 3


def test_pixels_are_untouched_and_file_still_reads(tmp_path):
    out = tmp_path / "ct.dcm"
    deidentify_file(CT_BRAIN[0], out, Deidentifier("k"))
    np.testing.assert_array_equal(read(out).pixels, read(CT_BRAIN[0]).pixels)


def test_longitudinal_consistency_with_the_same_salt():
    a, b = (pydicom.dcmread(p) for p in CT_BRAIN)
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.PatientID == b.PatientID
    deid = Deidentifier("site-secret")
    da, db = deid(a).dataset, deid(b).dataset
    assert da.StudyInstanceUID == db.StudyInstanceUID != a.StudyInstanceUID
    assert da.PatientID == db.PatientID != a.PatientID
    assert (da.SOPInstanceUID == db.SOPInstanceUID) == (a.SOPInstanceUID == b.SOPInstanceUID)
    # a second run (another process, another day) gives the same pseudonyms
    again = Deidentifier("site-secret")(a).dataset
    assert again.StudyInstanceUID == da.StudyInstanceUID and again.PatientID == da.PatientID
    other = Deidentifier("another-site")(a).dataset
    assert other.StudyInstanceUID != da.StudyInstanceUID and other.PatientID != da.PatientID


def test_references_inside_sequences_follow_their_targets():
    ds = pydicom.dcmread(CT_BRAIN[0])
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    out = Deidentifier("s")(ds).dataset
    ref = out.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == ds.SOPClassUID  # class UIDs are kept
    assert len(out.SOPInstanceUID) <= 64 and out.SOPInstanceUID.startswith("2.25.")


def test_burned_in_annotation_is_respected():
    ds = pydicom.dcmread(BURNED_IN)
    assert ds.BurnedInAnnotation == "YES"
    with pytest.raises(InvalidDicomError, match="Burned In Annotation is YES"):
        Deidentifier("s")(ds, source=str(BURNED_IN))
    result = Deidentifier("s", allow_burned_in=True)(ds)
    assert any("not cleaned" in w for w in result.warnings)


def test_safe_private_whitelist():
    ds = pydicom.dcmread(CAT)
    block = ds.private_block(0x0011, "OVERREAD TEST", create=True)
    block.add_new(0x01, "LO", "keep me")
    block.add_new(0x02, "LO", "drop me")
    kept = Deidentifier("s", keep_private={("OVERREAD TEST", 0x01)})(ds).dataset
    private = [e for e in kept.iterall() if e.tag.is_private]
    values = {str(e.value) for e in private}
    assert "keep me" in values and "drop me" not in values
    assert "OVERREAD TEST" in values  # its private creator survives with it
    codes = {item.CodeValue for item in kept.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113111"}


def test_date_shift_option_keeps_intervals():
    ds = pydicom.dcmread(CT_BRAIN[0])
    ds.StudyDate = "20200110"
    ds.SeriesDate = "20200112"
    out = Deidentifier("s", date_shift_days=-100)(ds).dataset
    assert out.StudyDate == "20191002"
    assert out.SeriesDate == "20191004"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    plain = Deidentifier("s")(ds).dataset
    assert plain.StudyDate == "" and "SeriesDate" not in plain
    assert plain.LongitudinalTemporalInformationModified == "REMOVED"


def test_profile_table_covers_the_key_attributes():
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert PROFILE[keyword] is Action.ZERO
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert PROFILE[keyword] is Action.UID
    assert PROFILE["InstitutionName"] is Action.REMOVE


def test_empty_salt_is_refused():
    with pytest.raises(ConfigError, match="salt"):
        Deidentifier("")


@pytest.mark.parametrize("path", [CT_BRAIN[0], CAT, COOKIES[0]], ids=lambda p: p.name)
def test_dciodvfy_finds_no_new_errors(path, tmp_path):
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools dciodvfy not installed")

    def errors(file: Path) -> set[str]:
        done = subprocess.run(
            ["dciodvfy", str(file)], capture_output=True, text=True, errors="replace", timeout=60
        )
        lines = (done.stdout + done.stderr).splitlines()
        return {line.split(" - ", 1)[-1] for line in lines if line.startswith("Error")}

    out = tmp_path / "deid.dcm"
    deidentify_file(path, out, Deidentifier("s"))
    assert errors(out) - errors(path) == set()
