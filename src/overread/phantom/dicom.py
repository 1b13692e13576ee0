"""Write a rendered radiograph as a real DICOM instance.

DX Image Storage - For Presentation by default (CR Image Storage optionally),
explicit VR little endian, with every attribute the DX IOD makes mandatory and
the ones a deployed second reader routes and monitors on (institution, station,
scanner, department, view, demographics). UIDs come from ``generate_uid`` with
an entropy source derived from the cohort seed, so the same seed gives the
same UIDs and byte-identical files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from overread import __version__
from overread.phantom.sites import DEPARTMENT_NAMES, Site

_VIEW_CODES = {
    "PA": ("399348003", "postero-anterior"),
    "AP": ("399182009", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
}


@dataclass(frozen=True)
class StudyUids:
    """The four UIDs of one single-image study."""

    patient_key: str
    study: str
    series: str
    sop: str


def cohort_uids(seed: int, index: int) -> StudyUids:
    """Deterministic UIDs for study ``index`` of the cohort made with ``seed``."""
    base = ["overread-phantom", str(seed), str(index)]
    return StudyUids(
        patient_key=generate_uid(entropy_srcs=[*base, "patient"]),
        study=generate_uid(entropy_srcs=[*base, "study"]),
        series=generate_uid(entropy_srcs=[*base, "series"]),
        sop=generate_uid(entropy_srcs=[*base, "sop"]),
    )


@dataclass(frozen=True)
class StudyHeader:
    """Header values of one study (everything but the pixels)."""

    patient_id: str
    patient_name: str
    sex: str
    age: int
    birth_date: dt.date
    group: str
    study_date: dt.date
    study_time: str
    accession: str
    department: str
    view: str
    site: Site
    uids: StudyUids
    study_number: int
    monochrome1: bool
    window_center: float
    window_width: float
    pixel_spacing_mm: float


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def build_dataset(header: StudyHeader, pixels: npt.NDArray[np.uint16]) -> Dataset:
    """A complete DX (or CR) dataset with file meta for ``pixels``."""
    site = header.site
    modality = site.modality
    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(header.uids.sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"OVERREAD_{__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    date = header.study_date.strftime("%Y%m%d")
    time = header.study_time
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = header.uids.sop
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = time
    ds.SeriesTime = time
    ds.AcquisitionTime = time
    ds.ContentTime = time
    ds.AccessionNumber = header.accession
    ds.Modality = modality
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = site.station
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.SeriesDescription = f"CHEST {header.view}"
    ds.InstitutionalDepartmentName = DEPARTMENT_NAMES[header.department]
    ds.ManufacturerModelName = site.model
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = header.birth_date.strftime("%Y%m%d")
    ds.PatientSex = header.sex
    ds.PatientAge = f"{min(header.age, 999):03d}Y"
    ds.EthnicGroup = header.group
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120" if header.view == "PA" else "90"
    ds.DeviceSerialNumber = f"{site.code}-{sum(map(ord, site.model)):05d}"
    ds.SoftwareVersions = site.software
    ds.DistanceSourceToDetector = "1800" if header.view == "PA" else "1000"
    ds.ExposureTime = "10" if header.view == "PA" else "16"
    ds.XRayTubeCurrent = "320"
    ds.Exposure = "3"
    spacing = f"{header.pixel_spacing_mm:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.ViewPosition = header.view
    ds.StudyInstanceUID = header.uids.study
    ds.SeriesInstanceUID = header.uids.series
    ds.StudyID = str(header.study_number)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    # A left lateral is shown facing the viewer's left: columns run front to back.
    ds.PatientOrientation = ["P", "F"] if header.view == "LL" else ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    request = Dataset()
    request.RequestedProcedureID = header.accession
    request.ScheduledProcedureStepID = f"{header.accession}-1"
    request.RequestedProcedureDescription = "XR CHEST"
    ds.RequestAttributesSequence = Sequence([request])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if header.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = site.acquisition.bits_stored
    ds.HighBit = site.acquisition.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = f"{header.window_center:.1f}"
    ds.WindowWidth = f"{header.window_width:.1f}"
    ds.WindowCenterWidthExplanation = "SITE DEFAULT"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
        view_code = _code(*_VIEW_CODES[header.view][:1], "SCT", _VIEW_CODES[header.view][1])
        view_code.ViewModifierCodeSequence = Sequence()
        ds.ViewCodeSequence = Sequence([view_code])
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if header.monochrome1 else -1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "INVERSE" if header.monochrome1 else "IDENTITY"
        ds.DetectorType = site.detector_type
        ds.DetectorConditionsNominalFlag = "YES"
        ds.DetectorID = site.station
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Nominal detector geometry"
        ds.AcquisitionContextSequence = Sequence()
        ds.PositionerType = "COLUMN" if header.view == "PA" else "NONE"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def write_dicom(path: Path, header: StudyHeader, pixels: npt.NDArray[np.uint16]) -> None:
    """Write the study as a DICOM Part 10 file at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_dataset(header, pixels).save_as(path, enforce_file_format=True)
