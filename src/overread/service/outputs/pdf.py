"""The AI second read as a one-study PDF report, wrapped as DICOM Encapsulated PDF.

Why a PDF: every PACS, archive and viewer stores and shows Encapsulated PDF Storage
(modality DOC) in the study, including those that render neither SR nor SEG, and a
PDF prints and travels into the clinical record as it is. It says, on every page,
that it is an AI result not verified by a radiologist (and "not for diagnosis"
where the model package's card says so), and names the patient prominently, so a
page on its own cannot be mistaken for a signed report or for another patient's.

A page holds:

* the statement band and the patient (name, ID, birth date, sex) in large type;
* the study (date, accession number, Study Instance UID) and the model (name,
  version, checksum) with its intended use from the model card;
* the summary sentence the SR carries, and the input gate's verdict when images
  were not analysed (or analysed outside the intended use);
* a table of findings: decision (positive / indeterminate / negative), probability,
  operating point and threshold, threshold proximity and explanation trust where
  known, and the critical flag;
* thumbnails of the heatmap overlays the service sends as Secondary Captures.

:func:`render_report_pdf` makes the PDF bytes; :func:`encapsulate_pdf` wraps any
PDF as an Encapsulated PDF instance in the source study (new series, patient and
study modules copied from the source images, Verification Flag UNVERIFIED as in
the SR); :func:`build_pdf_report` does both.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import PersonName

from overread.errors import ServiceError
from overread.findings import Finding
from overread.results import (
    Decision,
    FindingResult,
    ModelRef,
    Prediction,
    calibration_statement,
)
from overread.service.outputs.prediction import checked_findings, model_identity
from overread.service.outputs.sr import MANUFACTURER, gate_text, study_prediction, summary_text
from overread.service.verification import Verification

if TYPE_CHECKING:
    from overread.models.card import ModelCardSummary

logger = logging.getLogger(__name__)

#: Encapsulated PDF Storage.
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
#: What every page states first.
UNVERIFIED_STATEMENT = "AI result - not verified by a radiologist"
#: Added where the model package's card rules out diagnostic use.
NOT_FOR_DIAGNOSIS = "Not for diagnosis"
#: The document title in PACS and in the PDF's metadata.
DOCUMENT_TITLE = "overread AI second read (unverified)"
#: What every page of a reader-verified report states first.
VERIFIED_STATEMENT = "AI result - verified by a radiologist"
#: The title of a reader-verified report.
VERIFIED_TITLE = "overread AI second read (verified)"

#: How the table states each decision.
_DECISION_TEXT = {
    Decision.POSITIVE: "positive",
    Decision.INDETERMINATE: "indeterminate",
    Decision.NEGATIVE: "negative",
}
_DECISION_FILL = {
    Decision.POSITIVE: (253, 222, 222),
    Decision.INDETERMINATE: (255, 240, 200),
    Decision.NEGATIVE: (255, 255, 255),
}
_RED = (176, 0, 32)
_AMBER = (150, 90, 0)
#: Longest side of an embedded thumbnail, in pixels (enough for 60 mm at 200 dpi).
_THUMBNAIL_PIXELS = 480


@dataclass(frozen=True)
class OverlayThumbnail:
    """A heatmap overlay as the report shows it: the finding, the image's view, pixels.

    Attributes
    ----------
    finding
        The finding the overlay shows, on its image.
    view
        The image's view position (``"PA"``), or ``""`` for a one-image study.
    rgb
        (rows, columns, 3) uint8 pixels: the overlay as the Secondary Capture holds it.
    """

    finding: FindingResult
    view: str
    rgb: np.ndarray

    @classmethod
    def from_overlay(
        cls, overlay: Dataset, finding: FindingResult, view: str = ""
    ) -> OverlayThumbnail:
        """The thumbnail of a Secondary Capture overlay built for ``finding``."""
        pixels = np.asarray(overlay.pixel_array)
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ServiceError(f"overlay {overlay.SOPInstanceUID} is not an RGB image")
        return cls(finding=finding, view=view, rgb=pixels.astype(np.uint8))


@dataclass(frozen=True)
class ReportContext:
    """What the report says beyond the predictions.

    Attributes
    ----------
    card
        The model card summary (``None``: unknown, and the report then says "not for
        diagnosis", as the SR always does).
    critical
        Labels that reached their critical-alert threshold for this study.
    thumbnails
        Overlays to show, in order.
    verification
        A reader's verification: the report says who verified it and when, states
        the reader's decisions and is flagged ``VERIFIED`` (``None``: unverified).
    calibration
        Which calibration the service applied (``summary["calibration"]``): stated
        under the findings (``None``: not chosen by site, nothing said).
    """

    card: ModelCardSummary | None = None
    critical: Collection[str] = frozenset()
    thumbnails: Sequence[OverlayThumbnail] = ()
    verification: Verification | None = None
    calibration: Mapping[str, Any] | None = None

    @property
    def not_for_diagnosis(self) -> bool:
        """Whether the report says "not for diagnosis"."""
        return self.card is None or self.card.not_for_diagnosis


@dataclass(frozen=True)
class _Patient:
    """The patient and study as the report prints them."""

    name: str
    patient_id: str
    issuer: str
    birth_date: str
    sex: str
    study_date: str
    accession: str
    study_instance_uid: str
    description: str

    @classmethod
    def of(cls, source: Dataset) -> _Patient:
        def text(keyword: str) -> str:
            return str(source.get(keyword, "") or "").strip()

        return cls(
            name=_person(source.get("PatientName", "")),
            patient_id=text("PatientID"),
            issuer=text("IssuerOfPatientID"),
            birth_date=_date(text("PatientBirthDate")),
            sex=text("PatientSex"),
            study_date=_date(text("StudyDate")),
            accession=text("AccessionNumber"),
            study_instance_uid=text("StudyInstanceUID"),
            description=text("StudyDescription"),
        )

    @property
    def line(self) -> str:
        """One line naming the patient, for every page's header."""
        return f"{self.name or '(no name)'}  -  ID {self.patient_id or '(none)'}"


def _person(value: Any) -> str:
    """``FAMILY, Given Middle`` from a DICOM person name."""
    name = PersonName(str(value or ""))
    family = str(name.family_name or "").strip()
    given = " ".join(p for p in (name.given_name, name.middle_name) if p).strip()
    if family and given:
        return f"{family.upper()}, {given}"
    return family.upper() or given or str(value or "").replace("^", " ").strip()


def _date(value: str) -> str:
    """``YYYY-MM-DD`` from a DICOM DA (anything else as it is)."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _font_file(name: str) -> Path | None:
    """A DejaVu font: matplotlib's copy (a dependency), else the system's."""
    spec = importlib.util.find_spec("matplotlib")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "mpl-data" / "fonts" / "ttf" / name)
    candidates.append(Path("/usr/share/fonts/truetype/dejavu") / name)
    return next((path for path in candidates if path.is_file()), None)


class _ReportDocument(FPDF):
    """The page frame: statement band and patient line on top, statement and page
    number at the bottom of every page."""

    def __init__(self, patient: _Patient, statement: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.patient = patient
        self.statement = statement
        regular, bold = _font_file("DejaVuSans.ttf"), _font_file("DejaVuSans-Bold.ttf")
        if regular is not None and bold is not None:
            self.add_font("DejaVu", "", str(regular))
            self.add_font("DejaVu", "B", str(bold))
            self.typeface = "DejaVu"
            self.unicode = True
        else:  # the PDF core font covers Latin-1 only
            self.typeface = "Helvetica"
            self.unicode = False
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(14, 12, 14)

    def text_of(self, value: str) -> str:
        """``value`` as the font can print it."""
        if self.unicode:
            return value
        return value.encode("latin-1", "replace").decode("latin-1")

    def header(self) -> None:
        self.set_fill_color(*_RED)
        self.set_text_color(255, 255, 255)
        self.set_font(self.typeface, "B", 13)
        self.cell(
            0,
            9,
            self.text_of(self.statement.upper()),
            fill=True,
            align="C",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        self.set_text_color(0, 0, 0)
        if self.page_no() > 1:
            self.set_font(self.typeface, "B", 10)
            self.cell(
                0,
                7,
                self.text_of(f"Patient: {self.patient.line}"),
                new_x=XPos.LMARGIN,
                new_y=YPos.NEXT,
            )
        self.ln(2)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font(self.typeface, "", 7.5)
        self.set_text_color(90, 90, 90)
        self.cell(
            0,
            4,
            self.text_of(f"{self.statement}. {self.patient.line}"),
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        self.cell(
            0,
            4,
            self.text_of(f"Study {self.patient.study_instance_uid}"),
            align="L",
        )
        self.cell(0, 4, f"page {self.page_no()}/{{nb}}", align="R")
        self.set_text_color(0, 0, 0)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ranked(findings: Sequence[FindingResult]) -> list[FindingResult]:
    """Positive, then indeterminate, then negative; most probable first within each."""
    return sorted(findings, key=lambda f: (-f.decision.severity, -f.probability))


def render_report_pdf(
    predictions: Sequence[Prediction],
    source: Dataset,
    context: ReportContext | None = None,
    *,
    created: datetime | None = None,
) -> bytes:
    """Render the PDF report of one model's result on one study.

    Parameters
    ----------
    predictions
        The study's predictions, one per image, from one model. Those that failed
        (refused by the input gate) are reported as not analysed; when none
        succeeded the report says the study was not analysed.
    source
        One source image header of the study: the patient and study printed.
    context
        The model card, critical labels and overlay thumbnails.
    created
        When the report was made (default: now, UTC).

    Returns
    -------
    bytes
        The PDF file.

    Raises
    ------
    ServiceError
        If there is no prediction or a usable one has invalid values.
    """
    if not predictions:
        raise ServiceError("a PDF report needs at least one prediction")
    context = context or ReportContext()
    verification = context.verification
    if verification is not None:
        predictions = [verification.apply(p) if p.ok else p for p in predictions]
    usable = [p for p in predictions if p.ok]
    model = model_identity(usable[0] if usable else predictions[0])
    statement = (UNVERIFIED_STATEMENT if verification is None else VERIFIED_STATEMENT) + (
        f" - {NOT_FOR_DIAGNOSIS.lower()}" if context.not_for_diagnosis else ""
    )
    patient = _Patient.of(source)
    pdf = _ReportDocument(patient, statement)
    pdf.set_title(DOCUMENT_TITLE if verification is None else VERIFIED_TITLE)
    pdf.set_subject(pdf.text_of(f"AI second read of study {patient.study_instance_uid}"))
    pdf.set_author(MANUFACTURER)
    pdf.set_creator(f"{MANUFACTURER} {model.name} {model.version}")
    pdf.set_creation_date(created or datetime.now(UTC))
    pdf.add_page()

    _patient_block(pdf, patient)
    _model_block(pdf, model, context)
    if verification is not None:
        _paragraph(pdf, f"Verification ({verification.status.value})", verification.statement)
    gate = gate_text(predictions)
    if usable:
        merged = study_prediction(usable)
        _paragraph(pdf, "Summary", summary_text(merged))
        if gate:
            _paragraph(pdf, "Input gate", gate, colour=_AMBER)
        _findings_table(pdf, checked_findings(merged), context.critical)
        calibration = calibration_statement(context.calibration)
        if calibration:
            _paragraph(pdf, "Calibration", calibration)
        _thumbnails(pdf, context.thumbnails)
    else:
        _paragraph(
            pdf,
            "Not analysed",
            f"The model did not analyse this study. {gate or 'Not analysed.'}",
            colour=_AMBER,
        )
    return bytes(pdf.output())


def _heading(pdf: _ReportDocument, text: str) -> None:
    pdf.ln(2)
    pdf.set_font(pdf.typeface, "B", 11)
    pdf.cell(0, 6, pdf.text_of(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _paragraph(
    pdf: _ReportDocument, title: str, text: str, colour: tuple[int, int, int] = (0, 0, 0)
) -> None:
    _heading(pdf, title)
    pdf.set_font(pdf.typeface, "", 9.5)
    pdf.set_text_color(*colour)
    pdf.multi_cell(0, 5, pdf.text_of(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)


def _patient_block(pdf: _ReportDocument, patient: _Patient) -> None:
    pdf.set_font(pdf.typeface, "B", 18)
    pdf.cell(
        0, 9, pdf.text_of(patient.name or "(no patient name)"), new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )
    pdf.set_font(pdf.typeface, "B", 12)
    issuer = f" ({patient.issuer})" if patient.issuer else ""
    pdf.cell(
        0,
        7,
        pdf.text_of(f"Patient ID: {patient.patient_id or '(none)'}{issuer}"),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_font(pdf.typeface, "", 10)
    facts = [
        ("Birth date", patient.birth_date),
        ("Sex", patient.sex),
        ("Study date", patient.study_date),
        ("Accession", patient.accession),
    ]
    pdf.cell(
        0,
        6,
        pdf.text_of("    ".join(f"{k}: {v or '-'}" for k, v in facts)),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    if patient.description:
        pdf.cell(
            0, 5, pdf.text_of(f"Study: {patient.description}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.set_font(pdf.typeface, "", 8.5)
    pdf.cell(
        0,
        5,
        pdf.text_of(f"Study Instance UID: {patient.study_instance_uid}"),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_draw_color(160, 160, 160)
    pdf.line(pdf.l_margin, pdf.get_y() + 1, pdf.w - pdf.r_margin, pdf.get_y() + 1)
    pdf.ln(2)


def _model_block(pdf: _ReportDocument, model: ModelRef, context: ReportContext) -> None:
    _heading(pdf, "AI second read")
    pdf.set_font(pdf.typeface, "", 9.5)
    checksum = f" (package {model.short_hash})" if model.short_hash else ""
    pdf.cell(
        0,
        5,
        pdf.text_of(f"Model: {model.name} {model.version}{checksum}"),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    card = context.card
    if card is not None:
        pdf.multi_cell(
            0,
            5,
            pdf.text_of(f"Intended use: {card.statement}"),
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
    if context.not_for_diagnosis:
        pdf.set_font(pdf.typeface, "B", 10)
        pdf.set_text_color(*_RED)
        pdf.cell(
            0,
            6,
            pdf.text_of(f"{NOT_FOR_DIAGNOSIS.upper()}: this model is for research use."),
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        pdf.set_text_color(0, 0, 0)


def _findings_table(
    pdf: _ReportDocument, findings: Sequence[FindingResult], critical: Collection[str]
) -> None:
    _heading(pdf, "Findings (study level: the strongest call over the images)")
    headings = (
        "Finding",
        "Decision",
        "Probability",
        "Operating point",
        "Proximity",
        "Trust",
        "Critical",
    )
    widths = (48, 27, 20, 34, 18, 14, 21)
    pdf.set_font(pdf.typeface, "B", 8.5)
    pdf.set_fill_color(230, 230, 230)
    for heading, width in zip(headings, widths, strict=True):
        pdf.cell(width, 6, heading, border=1, fill=True)
    pdf.ln()
    for finding in _ranked(findings):
        is_critical = finding.label in critical
        bold = finding.decision is not Decision.NEGATIVE or is_critical
        pdf.set_font(pdf.typeface, "B" if bold else "", 8.5)
        pdf.set_fill_color(*_DECISION_FILL[finding.decision])
        threshold = finding.known_threshold
        point = finding.operating_point + (f" @ {threshold:.2f}" if threshold is not None else "")
        cells = (
            finding.label,
            _DECISION_TEXT[finding.decision],
            _fmt(finding.probability),
            point,
            _fmt(finding.threshold_proximity),
            _fmt(finding.trust_score),
            "CRITICAL" if is_critical else "",
        )
        for text, width in zip(cells, widths, strict=True):
            pdf.set_text_color(*(_RED if text == "CRITICAL" else (0, 0, 0)))
            _fitted_cell(pdf, width, 5.5, pdf.text_of(text), size=8.5, bold=bold)
        pdf.ln()
    pdf.set_text_color(0, 0, 0)
    pdf.set_font(pdf.typeface, "", 7.5)
    pdf.multi_cell(
        0,
        4,
        "Probability: calibrated model output. Operating point: the threshold the decision "
        "is made at. Proximity: how near the probability lies to that threshold (1 at it). "
        "Trust: how concentrated and decisive the model's heatmap is (0-1). Critical: at or "
        "over the site's alert threshold.",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )


def _fitted_cell(
    pdf: _ReportDocument, width: float, height: float, text: str, *, size: float, bold: bool
) -> None:
    """A bordered table cell whose type shrinks (to 6 pt at least) until ``text`` fits."""
    style = "B" if bold else ""
    pdf.set_font(pdf.typeface, style, size)
    while size > 6 and pdf.get_string_width(text) > width - 2 * pdf.c_margin:
        size -= 0.5
        pdf.set_font(pdf.typeface, style, size)
    pdf.cell(width, height, text, border=1, fill=True)


def _thumbnails(pdf: _ReportDocument, thumbnails: Sequence[OverlayThumbnail]) -> None:
    if not thumbnails:
        return
    width = 58.0
    first = thumbnails[0].rgb
    if pdf.get_y() + 16 + width * first.shape[0] / first.shape[1] > pdf.page_break_trigger:
        pdf.add_page()  # the heading stays with the first row
    _heading(pdf, "Where the model looked (heatmap overlays)")
    gap = (pdf.w - pdf.l_margin - pdf.r_margin - 3 * width) / 2
    column = 0
    row_top = pdf.get_y()
    row_height = 0.0
    for thumbnail in thumbnails:
        image = Image.fromarray(thumbnail.rgb, mode="RGB")
        image.thumbnail((_THUMBNAIL_PIXELS, _THUMBNAIL_PIXELS), Image.Resampling.LANCZOS)
        height = width * image.height / image.width
        if column == 0 and row_top + height + 10 > pdf.page_break_trigger:
            pdf.add_page()
            row_top = pdf.get_y()
        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        buffer.seek(0)
        x = pdf.l_margin + column * (width + gap)
        finding = thumbnail.finding
        caption = f"{finding.label}{f' ({thumbnail.view})' if thumbnail.view else ''}"
        pdf.image(buffer, x=x, y=row_top, w=width, h=height, alt_text=caption)
        pdf.set_xy(x, row_top + height + 0.5)
        pdf.set_font(pdf.typeface, "", 7.5)
        pdf.multi_cell(
            width,
            3.5,
            pdf.text_of(
                f"{caption}: p={finding.probability:.2f}, {_DECISION_TEXT[finding.decision]}"
            ),
            new_x=XPos.RIGHT,
            new_y=YPos.TOP,
        )
        row_height = max(row_height, height + 9)
        column += 1
        if column == 3:
            column = 0
            row_top += row_height
            row_height = 0.0
    pdf.set_xy(pdf.l_margin, row_top + row_height)


# ---- DICOM -------------------------------------------------------------------------------------

#: Patient and Patient Study attributes copied from the source (Type 2 ones always).
_PATIENT = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "QualityControlSubject",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)
_STUDY = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "ProcedureCodeSequence",
    "ReferencedStudySequence",
)
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def encapsulate_pdf(
    pdf: bytes,
    sources: Sequence[Dataset],
    *,
    model: ModelRef,
    series_number: int = 9904,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str | None = None,
    institution_name: str | None = None,
    created: datetime | None = None,
    verified: bool = False,
) -> Dataset:
    """Wrap ``pdf`` as an Encapsulated PDF Storage instance in the sources' study.

    Parameters
    ----------
    pdf
        The PDF file's bytes.
    sources
        The study's source image headers: the first gives the patient and study
        modules; all are referenced in the Source Instance Sequence.
    model
        The model whose result the document reports (General Equipment).
    series_number, instance_number, series_instance_uid, sop_instance_uid
        Identity of the new instance (same study, new series, modality DOC).
    verified
        Whether a reader verified the report (Verification Flag ``VERIFIED``).

    Returns
    -------
    pydicom.dataset.Dataset
        With file meta (Explicit VR Little Endian), ready to save or send.

    Raises
    ------
    ServiceError
        If ``pdf`` is not a PDF, or the sources are missing or span several studies.
    """
    if not pdf.startswith(b"%PDF-"):
        raise ServiceError("encapsulate_pdf: the document does not start with %PDF-")
    if not sources:
        raise ServiceError("encapsulate_pdf needs at least one source image header")
    for source in sources:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if not source.get(keyword):
                raise ServiceError(f"source image lacks {keyword}; cannot reference it")
    studies = {str(s.StudyInstanceUID) for s in sources}
    if len(studies) != 1:
        raise ServiceError(f"one PDF report covers one study; got {len(studies)}")
    first = sources[0]
    now = (created or datetime.now(UTC)).astimezone()  # DICOM dates and times are local

    ds = Dataset()
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    for keyword in (*_PATIENT, *_STUDY):
        if keyword in first:
            ds[keyword] = first[keyword]
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "PatientSpeciesDescription" in ds or "PatientSpeciesCodeSequence" in ds:
        # Type 2C for a non-human patient (veterinary studies).
        ds.PatientSexNeutered = first.get("PatientSexNeutered", "")
        for keyword in ("PatientBreedCodeSequence", "BreedRegistrationSequence"):
            if keyword not in ds:
                setattr(ds, keyword, [])
        if "ResponsiblePerson" not in ds:
            ds.ResponsiblePerson = ""
        if "ResponsibleOrganization" not in ds:
            ds.ResponsibleOrganization = ""
    # Encapsulated Document Series
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = series_number
    if series_description is None:
        series_description = f"overread AI report PDF ({'verified' if verified else 'unverified'})"
    ds.SeriesDescription = series_description[:64]
    # General and SC Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model.name[:64]
    ds.SoftwareVersions = model.version[:64]
    if institution_name:
        ds.InstitutionName = institution_name[:64]
    ds.ConversionType = "WSD"
    # Encapsulated Document
    ds.InstanceNumber = instance_number
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "YES"  # the patient is named on every page
    ds.RecognizableVisualFeatures = "NO"
    ds.VerificationFlag = "VERIFIED" if verified else "UNVERIFIED"
    ds.DocumentTitle = VERIFIED_TITLE if verified else DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = []
    references = []
    for source in sources:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        references.append(item)
    ds.SourceInstanceSequence = references
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # An odd-length document is padded with one NUL; the length says where it ends.
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    # SOP Common
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def encapsulated_pdf_bytes(dataset: Dataset) -> bytes:
    """The PDF an Encapsulated PDF instance holds, without the padding byte."""
    document = bytes(dataset.EncapsulatedDocument)
    length = dataset.get("EncapsulatedDocumentLength")
    return document[: int(length)] if length else document.rstrip(b"\x00")


def build_pdf_report(
    readings: Sequence[tuple[Prediction, Dataset]],
    context: ReportContext | None = None,
    **kwargs: Any,
) -> Dataset:
    """The Encapsulated PDF report of one model's predictions on one study.

    ``readings`` are ``(prediction, source header)`` pairs, one per image (refused
    ones included: the report names them); keyword arguments go to
    :func:`encapsulate_pdf`.
    """
    if not readings:
        raise ServiceError("a PDF report needs at least one source image")
    predictions = [p for p, _ in readings]
    sources = [s for _, s in readings]
    usable = [p for p in predictions if p.ok]
    model = model_identity(usable[0] if usable else predictions[0])
    created = kwargs.pop("created", None) or datetime.now(UTC)
    document = render_report_pdf(predictions, sources[0], context, created=created)
    kwargs.setdefault("verified", context is not None and context.verification is not None)
    dataset = encapsulate_pdf(document, sources, model=model, created=created, **kwargs)
    logger.info(
        "built PDF report",
        extra={
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "study_instance_uid": str(dataset.StudyInstanceUID),
            "bytes": len(document),
        },
    )
    return dataset


def overlay_thumbnails(
    prediction: Prediction,
    overlays: Sequence[Dataset],
    labels: Sequence[str],
    view: str = "",
) -> list[OverlayThumbnail]:
    """Thumbnails of the overlays built for ``labels`` of one image's prediction."""
    findings = {f.label: f for f in checked_findings(prediction)}
    return [
        OverlayThumbnail.from_overlay(overlay, findings[label], view)
        for overlay, label in zip(overlays, labels, strict=True)
        if label != Finding.NO_FINDING.value
    ]


__all__ = [
    "DOCUMENT_TITLE",
    "ENCAPSULATED_PDF_STORAGE",
    "NOT_FOR_DIAGNOSIS",
    "UNVERIFIED_STATEMENT",
    "VERIFIED_STATEMENT",
    "VERIFIED_TITLE",
    "OverlayThumbnail",
    "ReportContext",
    "build_pdf_report",
    "encapsulate_pdf",
    "encapsulated_pdf_bytes",
    "overlay_thumbnails",
    "render_report_pdf",
]
