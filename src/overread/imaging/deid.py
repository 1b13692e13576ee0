"""De-identification per PS3.15 Annex E, Basic Application Level Confidentiality Profile.

The profile's attribute table (PS3.15 Table E.1-1) gives, per attribute, an
action: **X** remove, **Z** replace with a zero-length value, **D** replace
with a dummy value, **K** keep, **C** clean, **U** replace a UID with a
consistent new one. pydicom does not ship that table, so the attributes that
matter for radiology images are encoded in :data:`PROFILE` below; beyond it,
every UID-valued (VR UI) element that is not a standard DICOM UID (class,
transfer syntax, coding scheme: ``1.2.840.10008.*``) is replaced too, and all
private elements are removed unless listed as safe (Retain Safe Private
Option, E.3.10).

UIDs and patient identifiers are replaced by keyed hashes (HMAC-SHA-256 with
a site secret ``salt``), so the same patient or study de-identified on
different days, by different processes, maps to the same pseudonym
(longitudinal consistency) while nobody without the salt can reverse or
re-derive it. Images whose Burned In Annotation is ``YES`` are refused: the
header can be cleaned, the pixels cannot (PS3.15 E.3.1 would need the Clean
Pixel Data Option).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from overread.errors import ConfigError, InvalidDicomError


class Action(StrEnum):
    """PS3.15 Table E.1-1 action codes."""

    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


X, Z, D, K, C, U = Action.REMOVE, Action.ZERO, Action.DUMMY, Action.KEEP, Action.CLEAN, Action.UID

# Basic Profile actions (PS3.15 Table E.1-1). Compound codes (X/Z, X/D, Z/D,
# X/Z/D) are resolved to the strongest action valid for an image IOD: Type 1
# attributes (which cannot be empty) get D, Type 2 get Z, Type 3 get X.
PROFILE: dict[str, Action] = {
    # Patient
    "PatientName": Z,
    "PatientID": Z,
    "IssuerOfPatientID": X,
    "PatientBirthDate": Z,
    "PatientBirthTime": X,
    "PatientSex": Z,
    "OtherPatientIDs": X,
    "OtherPatientIDsSequence": X,
    "OtherPatientNames": X,
    "PatientBirthName": X,
    "PatientAge": X,
    "PatientSize": X,
    "PatientWeight": X,
    "PatientAddress": X,
    "PatientMotherBirthName": X,
    "PatientTelephoneNumbers": X,
    "MilitaryRank": X,
    "BranchOfService": X,
    "MedicalRecordLocator": X,
    "EthnicGroup": X,
    "Occupation": X,
    "AdditionalPatientHistory": X,
    "PatientComments": X,
    "PatientReligiousPreference": X,
    "CountryOfResidence": X,
    "RegionOfResidence": X,
    "CurrentPatientLocation": X,
    "PatientInstitutionResidence": X,
    "PatientState": X,
    "PregnancyStatus": X,
    "SmokingStatus": X,
    "Allergies": X,
    "MedicalAlerts": X,
    "ResponsibleOrganization": Z,  # Type 2C for animals: emptied, not removed
    "ResponsiblePerson": Z,
    "PatientInsurancePlanCodeSequence": X,
    "PatientPrimaryLanguageCodeSequence": X,
    "AdmissionID": X,
    "AdmittingDiagnosesDescription": X,
    "AdmittingDiagnosesCodeSequence": X,
    # Study, series, visit
    "AccessionNumber": Z,
    "StudyID": Z,
    "StudyDate": Z,
    "StudyTime": Z,
    "SeriesDate": X,
    "SeriesTime": X,
    "AcquisitionDate": X,
    "AcquisitionTime": X,
    "AcquisitionDateTime": X,
    "ContentDate": Z,
    "ContentTime": Z,
    "InstanceCreationDate": X,
    "InstanceCreationTime": X,
    "OverlayDate": X,
    "OverlayTime": X,
    "CurveDate": X,
    "CurveTime": X,
    "PerformedProcedureStepStartDate": X,
    "PerformedProcedureStepStartTime": X,
    "PerformedProcedureStepEndDate": X,
    "PerformedProcedureStepEndTime": X,
    "PerformedProcedureStepID": X,
    "PerformedProcedureStepDescription": X,
    "RequestedProcedureID": X,
    "RequestedProcedureDescription": X,
    "ScheduledProcedureStepID": X,
    "RequestAttributesSequence": X,
    "ReferencedPatientSequence": X,
    "ReferencedStudySequence": X,
    "ReferencedPerformedProcedureStepSequence": X,
    "StudyDescription": X,
    "SeriesDescription": X,
    "ProtocolName": X,
    "ImageComments": X,
    "DerivationDescription": X,
    "AcquisitionComments": X,
    "AcquisitionDeviceProcessingDescription": X,
    "ReasonForTheRequestedProcedure": X,
    "RequestedProcedureComments": X,
    "ContentSequence": X,
    "IconImageSequence": X,
    "OverlayData": X,
    "OverlayComments": X,
    "CurveData": X,
    "TextString": X,
    "TextComments": X,
    "DigitalSignaturesSequence": X,
    # People and places
    "ReferringPhysicianName": Z,
    "ReferringPhysicianAddress": X,
    "ReferringPhysicianTelephoneNumbers": X,
    "ReferringPhysicianIdentificationSequence": X,
    "PerformingPhysicianName": X,
    "PerformingPhysicianIdentificationSequence": X,
    "NameOfPhysiciansReadingStudy": X,
    "PhysiciansReadingStudyIdentificationSequence": X,
    "PhysiciansOfRecord": X,
    "PhysiciansOfRecordIdentificationSequence": X,
    "RequestingPhysician": X,
    "RequestingService": X,
    "OperatorsName": X,
    "OperatorIdentificationSequence": X,
    "InstitutionName": X,
    "InstitutionAddress": X,
    "InstitutionCodeSequence": X,
    "InstitutionalDepartmentName": X,
    "StationName": X,
    "DeviceSerialNumber": X,
    "DetectorID": X,
    "PlateID": X,
    "GantryID": X,
    "CassetteID": X,
    "PersonName": D,
    "VerifyingObserverName": D,
    "VerificationDateTime": D,  # when a named reader verified: a date, shifted or dummy
    "DateTime": D,  # content items of value type DATETIME, DATE, TIME (structured content)
    "Date": D,
    "Time": D,
    "VerifyingObserverIdentificationCodeSequence": Z,
    "VerifyingOrganization": X,
    "ObserverContextSequence": X,
    "ContributingEquipmentSequence": X,
    "ModifiedAttributesSequence": X,
    "OriginalAttributesSequence": X,
    # UIDs named by the table (all other instance UIDs are caught by VR UI)
    "StudyInstanceUID": U,
    "SeriesInstanceUID": U,
    "SOPInstanceUID": U,
    "MediaStorageSOPInstanceUID": U,
    "FrameOfReferenceUID": U,
    "ReferencedSOPInstanceUID": U,
    "ReferencedFrameOfReferenceUID": U,
    "SynchronizationFrameOfReferenceUID": U,
    "IrradiationEventUID": U,
    "InstanceCreatorUID": U,
    "StorageMediaFileSetUID": U,
    "ConcatenationUID": U,
    "DimensionOrganizationUID": U,
    "UID": U,
}

#: Structured report storage SOP classes share this root.
SR_SOP_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."

#: Compound codes of Table E.1-1 resolved differently for SR IODs, where these are
#: Type 1 (Content Date/Time: Z/D -> D) or Type 2 (Referenced Performed Procedure Step
#: Sequence: X/Z/D -> Z) in the SR Document General and Series modules.
SR_PROFILE: dict[str, Action] = {
    "ContentDate": D,
    "ContentTime": D,
    "ReferencedPerformedProcedureStepSequence": Z,
}

# UID-valued attributes that identify a *kind* of thing, never a patient or study.
KEEP_UID_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "MediaStorageSOPClassUID",
        "ReferencedSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "PrivateInformationCreatorUID",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "MappingResourceUID",
        "ReferencedTransferSyntaxUIDInFile",
        "ReferencedSOPClassUIDInFile",
        "RequestedSOPClassUID",
        "AffectedSOPClassUID",
    }
)

DUMMY_BY_VR = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000.00",
    "DT": "19000101000000.000000",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "UI": "",
}
DATE_VRS = ("DA", "DT")

# CID 7050 De-identification Method codes
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")
CODE_CLEAN_PIXELS = ("113101", "Clean Pixel Data Option")
CODE_CLEAN_STRUCTURED_CONTENT = ("113104", "Clean Structured Content Option")

#: What the Retain Device Identity Option keeps (PS3.15 Table E.1-1, "Rtn. Dev. Id."
#: column: K): the equipment's names and serials, never the patient's or the site's.
DEVICE_IDENTITY_KEYWORDS = frozenset(
    {
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "DetectorID",
        "PlateID",
        "GantryID",
        "CassetteID",
        "GeneratorID",
        "DeviceDescription",
        "DeviceLabel",
        "SourceSerialNumber",
        "TreatmentMachineName",
        "PerformedStationName",
        "PerformedStationAETitle",
        "ScheduledStationName",
        "ScheduledStationAETitle",
    }
)

BURNED_IN_RISK_MODALITIES = frozenset({"US", "SC", "XA", "ES", "OT", "DOC"})


@dataclass(frozen=True)
class PixelRegionRule:
    """Where one device burns text into its images (the Clean Pixel Data Option).

    A rule applies to an image whose Manufacturer, Manufacturer's Model Name, Rows and
    Columns equal the ones it gives (case-insensitive; a condition left out matches
    anything); its boxes, ``(x, y, width, height)`` in pixels, are blanked. Known
    regions per device is how de-identification tools clean pixels without guessing
    (the RSNA CTP pixel anonymizer works the same way).
    """

    boxes: tuple[tuple[int, int, int, int], ...]
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None

    def applies_to(self, ds: Dataset) -> bool:
        """Whether ``ds`` comes from the device (and matrix size) this rule names."""

        def same(text: str | None, keyword: str) -> bool:
            wanted = (text or "").strip().upper()
            return text is None or str(ds.get(keyword, "") or "").strip().upper() == wanted

        return (
            same(self.manufacturer, "Manufacturer")
            and same(self.model, "ManufacturerModelName")
            and (self.rows is None or int(ds.get("Rows", 0) or 0) == self.rows)
            and (self.columns is None or int(ds.get("Columns", 0) or 0) == self.columns)
        )


def load_pixel_regions(path: str | Path) -> list[PixelRegionRule]:
    """Read ``[[region]]`` rules from a TOML file.

    Each table has ``boxes = [[x, y, width, height], ...]`` and optionally
    ``manufacturer``, ``model``, ``rows``, ``columns``.

    Raises
    ------
    ConfigError
        If the file cannot be read or a rule is malformed; the message names it.
    """
    import tomllib

    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read pixel regions ({exc})") from None
    rules: list[PixelRegionRule] = []
    for number, table in enumerate(data.get("region", []), start=1):
        where = f"{source}: region {number}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(table) - {"boxes", "manufacturer", "model", "rows", "columns"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        raw_boxes = table.get("boxes")
        if not isinstance(raw_boxes, list) or not raw_boxes:
            raise ConfigError(f"{where}: boxes = [[x, y, width, height], ...] is required")
        boxes: list[tuple[int, int, int, int]] = []
        for box in raw_boxes:
            if (
                not isinstance(box, list)
                or len(box) != 4
                or not all(isinstance(v, int) and v >= 0 for v in box)
                or box[2] == 0
                or box[3] == 0
            ):
                raise ConfigError(f"{where}: box {box!r} is not [x, y, width, height] in pixels")
            boxes.append((box[0], box[1], box[2], box[3]))
        for key in ("rows", "columns"):
            if key in table and not isinstance(table[key], int):
                raise ConfigError(f"{where}: {key} must be an integer")
        for key in ("manufacturer", "model"):
            if key in table and not isinstance(table[key], str):
                raise ConfigError(f"{where}: {key} must be a string")
        rules.append(
            PixelRegionRule(
                boxes=tuple(boxes),
                manufacturer=table.get("manufacturer"),
                model=table.get("model"),
                rows=table.get("rows"),
                columns=table.get("columns"),
            )
        )
    if not rules:
        raise ConfigError(f"{source}: no [[region]] rules")
    return rules


@dataclass
class DeidResult:
    """A de-identified dataset and what was done to it."""

    dataset: Dataset
    actions: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    changes: dict[str, str] = field(default_factory=dict)
    """Attribute (keyword, or tag for private and unknown ones) -> the action taken,
    for every attribute that was not kept as it was (nested ones once each)."""
    pixels_cleaned: int = 0
    """Boxes blanked in the pixel data (the Clean Pixel Data Option)."""


class Deidentifier:
    """Apply the Basic Profile with keyed, repeatable pseudonyms.

    Parameters
    ----------
    salt
        The site's secret key for UID and identifier hashing. The same salt
        gives the same pseudonyms (longitudinal consistency); keep it secret.
    keep_private
        ``(private creator, element byte)`` pairs to retain, e.g.
        ``{("SIEMENS CSA HEADER", 0x10)}``; all other private elements go.
    date_shift_days
        ``None`` applies the profile to dates (zeroed or removed). An integer
        applies the Retain Longitudinal Temporal Information with Modified
        Dates Option instead: every date is shifted by that many days
        (a per-site secret offset), so intervals between studies survive.
    allow_burned_in
        Accept images whose Burned In Annotation is ``YES`` (with a warning).
    retain_device_identity
        The Retain Device Identity Option: keep the equipment's names and serials
        (:data:`DEVICE_IDENTITY_KEYWORDS`), for example to study drift per detector.
    clean_structured_content
        The Clean Structured Content Option: an SR's Content Sequence is kept, with
        every UID, person name and listed attribute in it handled as anywhere else,
        instead of removed. Free text (TEXT items) is replaced by a dummy unless its
        concept is one of ``keep_text_concepts`` (generated text known to carry no
        identity) or its whole text matches a ``keep_text_values`` pattern; dates and times in items are shifted or replaced like the header's.
    keep_text_concepts
        ``(coding scheme, code value)`` of TEXT items kept as they are under
        ``clean_structured_content``.
    keep_text_values
        ``((coding scheme, code value), pattern)``: a TEXT item of that concept is
        kept as it is when its whole text matches the regular expression (generated
        text of a known form); otherwise it is replaced like any free text.
    pixel_regions
        The Clean Pixel Data Option: an image whose Burned In Annotation is ``YES`` has
        the boxes of the first matching rule blanked, and is then marked ``NO``; one
        that no rule matches is still refused (unless ``allow_burned_in``).
    """

    def __init__(
        self,
        salt: str,
        *,
        keep_private: Iterable[tuple[str, int]] = (),
        date_shift_days: int | None = None,
        allow_burned_in: bool = False,
        uid_root: str = "2.25.",
        retain_device_identity: bool = False,
        pixel_regions: Iterable[PixelRegionRule] | None = None,
        clean_structured_content: bool = False,
        keep_text_concepts: Iterable[tuple[str, str]] = (),
        keep_text_values: Iterable[tuple[tuple[str, str], str]] = (),
    ) -> None:
        if not salt:
            raise ConfigError("de-identification needs a non-empty salt (a site secret)")
        self._key = salt.encode("utf-8")
        self.keep_private = frozenset((c.strip(), int(e) & 0xFF) for c, e in keep_private)
        self.date_shift_days = date_shift_days
        self.allow_burned_in = allow_burned_in
        self.uid_root = uid_root
        self.retain_device_identity = retain_device_identity
        self.clean_structured_content = clean_structured_content
        self.keep_text_concepts = frozenset((c.upper(), v) for c, v in keep_text_concepts)
        self.keep_text_values = tuple(
            ((c.upper(), v), re.compile(pattern)) for (c, v), pattern in keep_text_values
        )
        self.pixel_regions = None if pixel_regions is None else tuple(pixel_regions)

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """The replacement for an instance UID: ``2.25.<128-bit keyed hash>``."""
        number = int.from_bytes(self._digest("uid", value.strip())[:16], "big")
        return f"{self.uid_root}{number}"[:64]

    def pseudonym(self, value: str, prefix: str = "ANON") -> str:
        """A short repeatable identifier replacing a patient ID or name."""
        return f"{prefix}{self._digest('id', value.strip()).hex()[:12].upper()}"

    def _shift_date(self, value: str) -> str:
        assert self.date_shift_days is not None
        text = str(value).strip()
        if len(text) < 8:
            return ""
        try:
            day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return ""
        shifted = day + dt.timedelta(days=self.date_shift_days)
        return shifted.strftime("%Y%m%d") + text[8:]

    def __call__(self, ds: Dataset, *, source: str | None = None) -> DeidResult:
        """De-identify a copy of ``ds``.

        Raises
        ------
        InvalidDicomError
            Burned In Annotation is ``YES`` and ``allow_burned_in`` is off.
        """
        label = source or "dataset"
        result = DeidResult(copy.deepcopy(ds))
        out = result.dataset
        burned = str(out.get("BurnedInAnnotation", "")).strip().upper()
        rule = None
        if burned == "YES" and self.pixel_regions is not None:
            rule = next((r for r in self.pixel_regions if r.applies_to(out)), None)
        if rule is not None:
            result.pixels_cleaned = _blank_boxes(out, rule.boxes, label)
            out.BurnedInAnnotation = "NO"
        elif burned == "YES":
            if not self.allow_burned_in:
                raise InvalidDicomError(
                    f"{label}: Burned In Annotation is YES: the pixels may show patient "
                    "identity and cannot be de-identified by header changes alone"
                )
            result.warnings.append("Burned In Annotation YES: pixel data not cleaned")
        elif not burned and str(out.get("Modality", "")) in BURNED_IN_RISK_MODALITIES:
            result.warnings.append(
                f"Burned In Annotation not stated for modality {out.get('Modality')}: "
                "pixels may carry identifying text"
            )
        patient_id = str(out.get("PatientID", "") or "")
        self._walk(out, result)
        if patient_id:  # a repeatable pseudonym keeps a patient's studies together
            out.PatientID = self.pseudonym(patient_id)
            out.PatientName = out.PatientID
        meta = getattr(out, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in out:
            meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        self._mark(out, cleaned=rule is not None)
        return result

    def _walk(self, ds: Dataset, result: DeidResult) -> None:
        for elem in list(ds):
            action = self._action(ds, elem)
            result.actions[action.value] = result.actions.get(action.value, 0) + 1
            if action is not Action.KEEP:
                name = elem.keyword or str(elem.tag)
                result.changes.setdefault(name, action.value)
            if action is Action.REMOVE:
                del ds[elem.tag]
            elif action is Action.ZERO:
                if self.date_shift_days is not None and elem.VR in DATE_VRS and elem.value:
                    elem.value = self._shift_date(str(elem.value))
                else:
                    elem.value = [] if elem.VR == "SQ" else ""
            elif action is Action.DUMMY:
                elem.value = Sequence([]) if elem.VR == "SQ" else DUMMY_BY_VR.get(str(elem.VR), "")
            elif action is Action.UID:
                self._replace_uid(elem)
            elif elem.VR == "SQ":
                for item in elem.value or []:
                    self._walk(item, result)

    def _action(self, ds: Dataset, elem: DataElement) -> Action:
        tag = elem.tag
        if tag.is_private:
            return Action.KEEP if self._private_kept(ds, elem) else Action.REMOVE
        keyword = elem.keyword
        if self.retain_device_identity and keyword in DEVICE_IDENTITY_KEYWORDS:
            return Action.KEEP
        if self.clean_structured_content and keyword == "ContentSequence":
            return Action.KEEP  # kept and walked: its items are de-identified too
        if self.clean_structured_content and keyword == "TextValue":
            concept = ds.get("ConceptNameCodeSequence")
            if concept:
                key = (str(concept[0].CodingSchemeDesignator).upper(), str(concept[0].CodeValue))
                if key in self.keep_text_concepts:
                    return Action.KEEP
                text = str(elem.value)
                if any(k == key and p.fullmatch(text) for k, p in self.keep_text_values):
                    return Action.KEEP
            return Action.DUMMY  # free text may name anyone
        if tag.group in range(0x6000, 0x6020, 2) and tag.element in (0x3000, 0x4000):
            return Action.REMOVE  # overlay data and comments (60xx)
        if tag.group in range(0x5000, 0x5020, 2):
            return Action.REMOVE  # retired curve groups (50xx)
        action = PROFILE.get(keyword)
        if keyword in SR_PROFILE and str(ds.get("SOPClassUID", "")).startswith(SR_SOP_CLASS_ROOT):
            action = SR_PROFILE[keyword]
        if action is not None:
            if (
                self.date_shift_days is not None
                and elem.VR in ("DA", "DT", "TM")
                and action in (Action.REMOVE, Action.ZERO, Action.DUMMY)
            ):
                return Action.ZERO if elem.VR != "TM" else Action.KEEP
            return action
        if elem.VR == "UI" and keyword not in KEEP_UID_KEYWORDS:
            return Action.UID
        if elem.VR == "PN":
            return Action.DUMMY  # any person name not listed is still a person
        return Action.KEEP

    def _replace_uid(self, elem: DataElement) -> None:
        def new(value: str) -> str:
            text = str(value).strip()
            if not text or text.startswith("1.2.840.10008."):
                return text
            return self.uid(text)

        if elem.VM > 1:
            elem.value = [new(v) for v in elem.value]
        elif elem.value:
            elem.value = new(elem.value)

    def _private_kept(self, ds: Dataset, elem: DataElement) -> bool:
        tag = elem.tag
        if not self.keep_private:
            return False
        if 0x0010 <= tag.element <= 0x00FF:  # a private creator: kept if its block is
            creator = str(elem.value).strip()
            return any(c == creator for c, _ in self.keep_private)
        creator_tag = pydicom.tag.Tag(tag.group, tag.element >> 8)
        if creator_tag not in ds:
            return False
        creator = str(ds[creator_tag].value).strip()
        return (creator, tag.element & 0xFF) in self.keep_private

    def _mark(self, ds: Dataset, *, cleaned: bool = False) -> None:
        """PS3.15 E.1.1 / PS3.3 C.12.1: record that and how identity was removed."""
        ds.PatientIdentityRemoved = "YES"
        codes = [CODE_BASIC_PROFILE]
        if cleaned:
            codes.append(CODE_CLEAN_PIXELS)
        if self.keep_private:
            codes.append(CODE_SAFE_PRIVATE)
        if self.retain_device_identity:
            codes.append(CODE_DEVICE_IDENTITY)
        if self.clean_structured_content:
            codes.append(CODE_CLEAN_STRUCTURED_CONTENT)
        if self.date_shift_days is not None:
            codes.append(CODE_MODIFIED_DATES)
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        ds.DeidentificationMethod = "PS3.15 Basic Application Level Confidentiality Profile"
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)


def _blank_boxes(ds: Dataset, boxes: Iterable[tuple[int, int, int, int]], label: str) -> int:
    """Blank ``boxes`` in every frame of ``ds``'s pixels; the count blanked.

    The pixels are written back uncompressed (a lossy codec would blur the blanked
    edge back into the text). Blank is the darkest value for the photometric
    interpretation: the minimum for MONOCHROME2 and colour, the maximum for
    MONOCHROME1.
    """
    try:
        pixels = ds.pixel_array.copy()
    except Exception as exc:
        raise InvalidDicomError(f"{label}: cannot decode pixels to clean them ({exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pixel_array converted it
    blank = pixels.max() if photometric == "MONOCHROME1" else pixels.min()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows_axis = 1 if frames > 1 else 0
    rows, columns = pixels.shape[rows_axis], pixels.shape[rows_axis + 1]
    count = 0
    for x, y, width, height in boxes:
        if x >= columns or y >= rows:
            continue
        region = (slice(y, min(rows, y + height)), slice(x, min(columns, x + width)))
        if frames > 1:
            pixels[(slice(None), *region)] = blank
        else:
            pixels[region] = blank
        count += 1
    ds.set_pixel_data(pixels, photometric, int(ds.get("BitsStored", pixels.itemsize * 8)))
    return count


#: The profile and the PS3.15 options, by the names configurations and ``--profile`` use.
PROFILE_OPTIONS = (
    "basic",
    "retain-modified-dates",
    "retain-device-identity",
    "clean-pixel-data",
    "clean-structured-content",
)


def site_date_shift(salt: str) -> int:
    """The site's secret date offset: 1 to 3,650 days back, the same for every run."""
    digest = hmac.new(salt.encode("utf-8"), b"date-shift", hashlib.sha256).digest()
    return -(int.from_bytes(digest[:4], "big") % 3650 + 1)


def profile_options(names: Iterable[str]) -> tuple[str, ...]:
    """``basic`` plus the named options, in :data:`PROFILE_OPTIONS` order.

    Each name may itself be comma-separated (``"basic,retain-device-identity"``).

    Raises
    ------
    ConfigError
        For a name that is not one of :data:`PROFILE_OPTIONS`.
    """
    chosen = {"basic"}
    for value in names:
        for name in (v.strip().lower() for v in value.split(",")):
            if name not in PROFILE_OPTIONS:
                raise ConfigError(
                    f"unknown profile {name!r}: choose from {', '.join(PROFILE_OPTIONS)}"
                )
            chosen.add(name)
    return tuple(p for p in PROFILE_OPTIONS if p in chosen)


def build_deidentifier(
    salt: str,
    options: Iterable[str],
    *,
    date_shift_days: int | None = None,
    pixel_regions: Iterable[PixelRegionRule] | None = None,
    keep_text_concepts: Iterable[tuple[str, str]] = (),
    keep_text_values: Iterable[tuple[tuple[str, str], str]] = (),
) -> Deidentifier:
    """The :class:`Deidentifier` for a profile with options (:func:`profile_options`).

    ``retain-modified-dates`` shifts dates by ``date_shift_days``, by default the
    site's secret offset (:func:`site_date_shift`); ``clean-pixel-data`` needs
    ``pixel_regions``.

    Raises
    ------
    ConfigError
        For an unknown option, or an option's setting given without it (or missing).
    """
    chosen = profile_options(options)
    regions = None if pixel_regions is None else tuple(pixel_regions)
    if "clean-pixel-data" in chosen and regions is None:
        raise ConfigError("clean-pixel-data needs pixel regions (where each device burns text)")
    if regions is not None and "clean-pixel-data" not in chosen:
        raise ConfigError("pixel regions are only used with the clean-pixel-data option")
    if date_shift_days is not None and "retain-modified-dates" not in chosen:
        raise ConfigError("a date shift is only used with the retain-modified-dates option")
    shift = None
    if "retain-modified-dates" in chosen:
        shift = site_date_shift(salt) if date_shift_days is None else date_shift_days
    return Deidentifier(
        salt,
        date_shift_days=shift,
        retain_device_identity="retain-device-identity" in chosen,
        pixel_regions=regions,
        clean_structured_content="clean-structured-content" in chosen,
        keep_text_concepts=keep_text_concepts,
        keep_text_values=keep_text_values,
    )


def deidentify_file(
    source: str | Path, destination: str | Path, deidentifier: Deidentifier
) -> DeidResult:
    """Read a DICOM file, de-identify it and write it (Part 10) to ``destination``."""
    src = Path(source)
    try:
        ds = pydicom.dcmread(src)
    except Exception as exc:
        raise InvalidDicomError(f"{src}: cannot read for de-identification ({exc})") from None
    result = deidentifier(ds, source=str(src))
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    result.dataset.save_as(destination, enforce_file_format=True)
    return result


__all__ = [
    "DEVICE_IDENTITY_KEYWORDS",
    "PROFILE",
    "PROFILE_OPTIONS",
    "Action",
    "DeidResult",
    "Deidentifier",
    "PixelRegionRule",
    "build_deidentifier",
    "deidentify_file",
    "load_pixel_regions",
    "profile_options",
    "site_date_shift",
]
