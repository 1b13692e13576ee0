"""De-identification (PS3.15 Basic Profile) on deid-data's DICOM files."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from overread.errors import ConfigError, InvalidDicomError
from overread.imaging import read
from overread.imaging.deid import (
    PROFILE,
    Action,
    Deidentifier,
    deidentify_file,
    load_pixel_regions,
)

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


def test_retain_device_identity_keeps_the_equipment_and_nothing_of_the_patient() -> None:
    plain = Deidentifier("site-secret")(pydicom.dcmread(CT_BRAIN[0])).dataset
    kept = Deidentifier("site-secret", retain_device_identity=True)(
        pydicom.dcmread(CT_BRAIN[0])
    ).dataset
    assert "StationName" not in plain and "DeviceSerialNumber" not in plain
    assert kept.StationName == "SGHCT01A" and kept.DeviceSerialNumber == "11223"
    assert str(kept.PatientName) != str(pydicom.dcmread(CT_BRAIN[0]).PatientName)
    codes = [item.CodeValue for item in kept.DeidentificationMethodCodeSequence]
    assert "113109" in codes and "113109" not in [
        item.CodeValue for item in plain.DeidentificationMethodCodeSequence
    ]


def _regions(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "regions.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_clean_pixel_data_blanks_the_device_regions_or_refuses(tmp_path: Path) -> None:
    rules = load_pixel_regions(
        _regions(
            tmp_path,
            '[[region]]\nmanufacturer = "philips medical systems"\nmodel = "EPIQ 5G"\n'
            "boxes = [[0, 0, 1024, 60], [900, 700, 200, 200]]\n",
        )
    )
    original = pydicom.dcmread(BURNED_IN)
    assert original.pixel_array[:60].max() > 0  # there is something to blank
    result = Deidentifier("site-secret", pixel_regions=rules)(original)
    cleaned = result.dataset
    assert result.pixels_cleaned == 2
    assert cleaned.BurnedInAnnotation == "NO"
    pixels = cleaned.pixel_array
    assert pixels[:60].max() == pixels.min()
    assert pixels[700:, 900:].max() == pixels.min()
    assert np.array_equal(pixels[60:700, :900], original.pixel_array[60:700, :900])
    assert "113101" in [i.CodeValue for i in cleaned.DeidentificationMethodCodeSequence]

    other_device = load_pixel_regions(
        _regions(tmp_path, '[[region]]\nmanufacturer = "ACME"\nboxes = [[0, 0, 10, 10]]\n')
    )
    with pytest.raises(InvalidDicomError, match="Burned In Annotation"):
        Deidentifier("site-secret", pixel_regions=other_device)(pydicom.dcmread(BURNED_IN))


@pytest.mark.parametrize(
    "text",
    [
        "[[region]]\nboxes = [[0, 0, 0, 10]]\n",
        "[[region]]\nmanufacturer = 3\nboxes = [[0, 0, 1, 1]]\n",
        "[[region]]\ncolour = 'red'\nboxes = [[0, 0, 1, 1]]\n",
        "not toml [",
        "",
    ],
)
def test_malformed_pixel_region_files_are_refused_with_their_name(
    tmp_path: Path, text: str
) -> None:
    with pytest.raises(ConfigError, match=r"regions\.toml"):
        load_pixel_regions(_regions(tmp_path, text))


def test_deid_cli_writes_outputs_by_new_uid_reports_changes_and_carries_on(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_DEID_SALT", "site-secret")
    junk = tmp_path / "in" / "junk.dcm"
    junk.parent.mkdir()
    junk.write_bytes(b"not dicom")
    out = tmp_path / "shared" / "out"
    report = tmp_path / "private" / "report.json"
    sources = [*COOKIES[:2], *CT_BRAIN]  # the two CT files are one instance
    status, stdout, stderr = run_cli(
        "deid",
        *sources,
        junk,
        out,
        "--profile",
        "retain-modified-dates",
        "--date-shift-days",
        "-10",
        "--report",
        report,
    )
    assert status == 1, stderr
    assert stderr.count("error:") == 1 and "junk.dcm" in stderr and "Traceback" not in stderr
    assert "the same instance as" in stderr and "written once" in stderr
    outputs = sorted(out.glob("*.dcm"))
    assert len(outputs) == 3 and "de-identified 4 file(s)" in stdout
    by_uid = {
        Deidentifier("site-secret").uid(str(pydicom.dcmread(p).SOPInstanceUID)): p for p in sources
    }
    for path in outputs:
        ds = pydicom.dcmread(path)
        assert path.stem == ds.SOPInstanceUID and ds.PatientIdentityRemoved == "YES"
        source = pydicom.dcmread(by_uid[path.stem])
        assert str(ds.PatientID) != str(source.PatientID)
        if source.get("StudyDate"):
            days = datetime.strptime(source.StudyDate, "%Y%m%d") - datetime.strptime(
                ds.StudyDate, "%Y%m%d"
            )
            assert days.days == 10
    data = json.loads(report.read_text())
    assert data["deidentified"] == 4 and data["date_shift_days"] == -10
    assert data["refused"][0]["source"].endswith("junk.dcm")
    assert data["files"][0]["changes"]["PatientID"] == "Z"
    assert data["files"][0]["changes"]["SOPInstanceUID"] == "U"
    assert not list(out.glob(".partial-*"))


def test_deid_cli_refuses_bad_options_in_one_line(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OVERREAD_DEID_SALT", raising=False)
    status, _, err = run_cli("deid", CT_BRAIN[0], tmp_path / "out")
    assert status == 2 and err.startswith("error:") and "salt" in err
    monkeypatch.setenv("OVERREAD_DEID_SALT", "s")
    status, _, err = run_cli("deid", CT_BRAIN[0], tmp_path / "out", "--profile", "everything")
    assert status == 2 and "unknown profile 'everything'" in err
    status, _, err = run_cli("deid", CT_BRAIN[0], tmp_path / "out", "--profile", "clean-pixel-data")
    assert status == 2 and "--pixel-regions" in err
    status, _, err = run_cli("deid", tmp_path / "out")
    assert status == 2 and "output folder" in err
    status, _, err = run_cli("deid", BURNED_IN, tmp_path / "out")
    assert status == 2 and "Burned In Annotation" in err


def test_clean_structured_content_keeps_generated_text_and_replaces_free_text() -> None:
    from pydicom.dataset import Dataset as Ds
    from pydicom.sequence import Sequence as Seq

    def text_item(code: str, value: str) -> Ds:
        concept = Ds()
        concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = code, "99X", code
        item = Ds()
        item.ValueType, item.ConceptNameCodeSequence, item.TextValue = "TEXT", Seq([concept]), value
        return item

    ds = pydicom.dcmread(CT_BRAIN[0])
    ds.ContentSequence = Seq(
        [text_item("SUMMARY", "3 findings"), text_item("NOTE", "told Mrs Smith at 10:00")]
    )
    observer = Ds()
    observer.VerifyingObserverName = "Grey^Meredith"
    observer.VerificationDateTime = "20240502100000"
    ds.VerifyingObserverSequence = Seq([observer])
    out = Deidentifier(
        "site-secret", clean_structured_content=True, keep_text_concepts=[("99X", "SUMMARY")]
    )(ds).dataset
    kept, replaced = out.ContentSequence
    assert kept.TextValue == "3 findings"
    assert replaced.TextValue != "told Mrs Smith at 10:00" and "Smith" not in replaced.TextValue
    verifier = out.VerifyingObserverSequence[0]
    assert "Grey" not in str(verifier.VerifyingObserverName)
    assert str(verifier.VerificationDateTime) != "20240502100000"
