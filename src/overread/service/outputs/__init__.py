"""Results out: what goes back to where radiologists work.

* :func:`build_study_sr` - one DICOM Comprehensive SR (TID 1500 Measurement Report)
  per study and model, with one measurement group per image and finding (probability,
  threshold, present/absent, model, source image reference) and a plain-language
  summary (:func:`build_sr`: one prediction over its source images);
* :func:`build_overlay` - a Secondary Capture of a finding's heatmap on the windowed
  image, with "FOR RESEARCH USE - NOT FOR DIAGNOSIS" burned in (:func:`build_overlays`:
  one per positive or referred finding, in one series);
* :func:`build_seg` - a DICOM Segmentation from a segmentation model's mask;
* :func:`build_pdf_report` - a PDF report of the study (patient, findings, overlay
  thumbnails, the model card's intended use, "not verified by a radiologist") as a
  DICOM Encapsulated PDF, modality DOC;
* :func:`build_fhir_report` - a FHIR R4 Bundle: DiagnosticReport, one Observation per
  finding, and the model as a Device (:func:`fhir_report_for_study`: the same from a
  study's stored results, for the REST API and the FHIR export jobs);
* senders: :func:`send_datasets` (DICOM C-STORE, optionally over TLS), :func:`echo`
  (C-ECHO), :func:`stow_rs` (DICOMweb) and :func:`post_fhir`; the job system retries
  a failed send with its :class:`~overread.service.jobs.RetryPolicy`.
"""

from overread.service.outputs.codes import Concept, finding_concept
from overread.service.outputs.dicom_send import (
    DeliveryError,
    DicomDestination,
    SendResult,
    echo,
    send_datasets,
)
from overread.service.outputs.fhir import (
    ResultNotFoundError,
    build_fhir_report,
    fhir_report_for_result,
    fhir_report_for_study,
)
from overread.service.outputs.http_send import HttpResult, post_fhir, stow_rs
from overread.service.outputs.overlay import (
    RESEARCH_BANNER,
    build_overlay,
    build_overlays,
    overlay_labels,
)
from overread.service.outputs.pdf import (
    ENCAPSULATED_PDF_STORAGE,
    OverlayThumbnail,
    ReportContext,
    build_pdf_report,
    encapsulate_pdf,
    encapsulated_pdf_bytes,
    overlay_thumbnails,
    render_report_pdf,
)
from overread.service.outputs.prediction import model_identity
from overread.service.outputs.seg import CAM_REGION_DESCRIPTION, build_seg, cam_region_masks
from overread.service.outputs.sr import (
    build_not_analysed_sr,
    build_sr,
    build_study_sr,
    gate_text,
    image_label,
    study_prediction,
    summary_text,
)

__all__ = [
    "CAM_REGION_DESCRIPTION",
    "ENCAPSULATED_PDF_STORAGE",
    "RESEARCH_BANNER",
    "Concept",
    "DeliveryError",
    "DicomDestination",
    "HttpResult",
    "OverlayThumbnail",
    "ReportContext",
    "ResultNotFoundError",
    "SendResult",
    "build_fhir_report",
    "build_not_analysed_sr",
    "build_overlay",
    "build_overlays",
    "build_pdf_report",
    "build_seg",
    "build_sr",
    "build_study_sr",
    "cam_region_masks",
    "echo",
    "encapsulate_pdf",
    "encapsulated_pdf_bytes",
    "fhir_report_for_result",
    "fhir_report_for_study",
    "finding_concept",
    "gate_text",
    "image_label",
    "model_identity",
    "overlay_labels",
    "overlay_thumbnails",
    "post_fhir",
    "render_report_pdf",
    "send_datasets",
    "stow_rs",
    "study_prediction",
    "summary_text",
]
