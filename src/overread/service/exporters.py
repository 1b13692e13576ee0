"""Exporters: one per destination kind, each sending a stored result once per attempt.

* :class:`DicomExporter` C-STOREs the result's stored DICOM objects (SR, overlays,
  SEG) to a DICOM node;
* :class:`FhirExporter` POSTs the result's FHIR report to a FHIR endpoint;
* :class:`Hl7Exporter` sends its ORU^R01 to an HL7 v2 endpoint over MLLP.
* :class:`StowExporter` stores the result's DICOM objects on a DICOMweb server
  (STOW-RS).

Every attempt to deliver is audited (``export``, with ``destination_kind``,
``outcome`` ``stored`` or ``failed`` and the peer's statuses), whether it succeeds
or not, also one that fails before anything is sent (the result or its stored
objects gone, the FHIR endpoint no longer configured, no report to build); a success is audited in the transaction that marks the job done. A failure
is raised for the worker to retry or dead-letter.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, assert_never

from sqlalchemy import select

from overread.audit import AuditAction
from overread.errors import InferenceError, ServiceError
from overread.service.config import FhirEndpoint, Hl7Endpoint, StowEndpoint

if TYPE_CHECKING:
    from overread.imaging.deid import Deidentifier
from overread.service.db import Job, Result, ResultReview, ReviewState
from overread.service.handling import JobServices, PermanentExportError
from overread.service.payloads import (
    DicomExportPayload,
    ExportPayload,
    FhirExportPayload,
    Hl7ExportPayload,
    StowExportPayload,
)
from overread.service.rollout import RolloutStore
from overread.service.scu import AssociationPool, SendStatus

logger = logging.getLogger(__name__)

P_contra = TypeVar("P_contra", bound=ExportPayload, contravariant=True)


class Exporter(Protocol[P_contra]):
    """Sends one stored result to one destination of its kind."""

    def export(self, job: Job, payload: P_contra) -> None:
        """Deliver, audit the attempt, and mark the job done (raise on failure)."""
        ...


def _record_attempt(
    services: JobServices,
    job: Job,
    object_uids: list[str],
    details: dict[str, Any],
    *,
    succeeded: bool,
) -> None:
    """Audit one delivery attempt; a successful one also marks the job done."""
    with services.database.session() as session:
        services.audit(session, action=AuditAction.EXPORT, object_uids=object_uids, details=details)
        if succeeded:
            services.queue.mark_succeeded(session, job.id, services.owner)


def _record_sending(
    services: JobServices, job: Job, object_uids: list[str], details: dict[str, Any]
) -> None:
    """Audit that a delivery starts, in its own transaction, before anything leaves.

    If the process dies after the peer has the objects but before the outcome is
    recorded, this event is what shows that they may have arrived (the retry sends
    them again under the same UIDs, which a PACS stores once).
    """
    with services.database.session() as session:
        services.audit(
            session,
            action=AuditAction.EXPORT,
            object_uids=object_uids,
            details={**details, "outcome": "sending"},
        )


def _record_failure(
    services: JobServices,
    job: Job,
    object_uids: list[str],
    details: dict[str, Any],
    error: str,
) -> None:
    """Audit an attempt that failed before anything was sent (nothing stored, no status)."""
    details.update(outcome="failed", seconds=0.0, error=error[:500])
    _record_attempt(services, job, object_uids, details, succeeded=False)


#: What a de-identifying destination may get: structured objects (SR, SEG), whose
#: identity is all in attributes the profile handles. The PDF report (its text names the
#: patient) and the overlays (captions burned into the pixels, Burned In Annotation
#: YES, which the de-identifier refuses) are left out.
_DEIDENTIFIABLE_ROOTS = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.66.4")


class DicomExporter:
    """C-STOREs a result's stored objects to the payload's DICOM destination, on an
    association kept open between sends (``association_idle_seconds``)."""

    def __init__(self, services: JobServices, associations: AssociationPool | None = None) -> None:
        self.services = services
        self.associations = associations or AssociationPool(
            services.config.kept_association_seconds
        )

    def export(self, job: Job, payload: DicomExportPayload) -> None:
        dest = payload.destination
        details: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempts,
            "destination_kind": "dicom",
            "destination": str(dest),
            "objects": 0,
        }
        with self.services.database.session() as session:
            result = session.get(Result, payload.result_id)
            artifacts = None if result is None else payload.chosen(result.artifacts)
        if artifacts is None:
            error = f"result {payload.result_id} no longer exists"
            details["statuses"] = []
            _record_failure(self.services, job, [job.study_instance_uid], details, error)
            raise InferenceError(error)
        if dest.deidentify is not None:
            artifacts = [
                a
                for a in artifacts
                if str(a.get("sop_class_uid", "")).startswith(_DEIDENTIFIABLE_ROOTS)
            ]
        paths = [self.services.store.path(str(a["key"])) for a in artifacts]
        object_uids = [job.study_instance_uid, *(str(a["sop_instance_uid"]) for a in artifacts)]
        details["objects"] = len(paths)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            error = f"stored result object(s) missing: {', '.join(missing)}"
            details["statuses"] = []
            _record_failure(self.services, job, object_uids, details, error)
            raise InferenceError(error)
        _record_sending(self.services, job, object_uids, details)
        started = time.perf_counter()
        try:
            if dest.deidentify is not None:
                details["deidentified"] = list(dest.deidentify)
                with tempfile.TemporaryDirectory(prefix="overread-deid-") as folder:
                    statuses = self._send(
                        self._deidentified(paths, dest.deidentify, Path(folder)),
                        dest.ae_title,
                        dest.host,
                        dest.port,
                    )
            else:
                statuses = self._send(paths, dest.ae_title, dest.host, dest.port)
        except Exception as exc:
            details.update(
                outcome="failed",
                statuses=[],
                seconds=round(time.perf_counter() - started, 6),
                error=str(exc)[:500],
            )
            _record_attempt(self.services, job, object_uids, details, succeeded=False)
            raise
        seconds = time.perf_counter() - started
        details["statuses"] = sorted({int(s.status) for s in statuses if s.status is not None})
        details["seconds"] = round(seconds, 6)
        failed = [s for s in statuses if not s.ok]
        if failed:
            error = (
                f"{len(failed)}/{len(statuses)} object(s) not accepted by {dest}: {failed[0].error}"
            )
            details.update(outcome="failed", error=error[:500])
            _record_attempt(self.services, job, object_uids, details, succeeded=False)
            raise ConnectionError(error)
        details["outcome"] = "stored"
        _record_attempt(self.services, job, object_uids, details, succeeded=True)
        logger.info(
            "job %d: sent %d object(s) to %s in %.3f s", job.id, len(statuses), dest, seconds
        )

    def _deidentified(
        self, paths: list[Path], options: tuple[str, ...], folder: Path
    ) -> list[Path]:
        """De-identified copies of ``paths`` in ``folder`` (the stored objects stay)."""
        from overread.imaging.deid import deidentify_file

        deidentifier = export_deidentifier(self.services.config.deid_salt(), options)
        copies = []
        for number, path in enumerate(paths):
            copy = folder / f"{number}.dcm"
            deidentify_file(path, copy, deidentifier)
            copies.append(copy)
        return copies

    def _send(self, paths: list[Path], ae_title: str, host: str, port: int) -> list[SendStatus]:
        return self.associations.send(
            paths,
            ae_title=ae_title,
            host=host,
            port=port,
            calling_ae=self.services.config.ae_title,
        )


def export_deidentifier(salt: str, options: tuple[str, ...]) -> Deidentifier:
    """The de-identifier of an export to a destination that de-identifies.

    The SR's generated summary and gate statement carry no identity, nor do the
    warnings the pipeline words itself (of known forms,
    :data:`overread.service.outputs.volume.GENERATED_WARNINGS`); any other text (a
    reader's note, who verified it, a DICOM reader's message that can echo a header
    value) is replaced."""
    from overread.imaging.deid import build_deidentifier
    from overread.service.outputs import codes as oc
    from overread.service.outputs.volume import GENERATED_WARNINGS

    generated = [(c.scheme, c.value) for c in (oc.SUMMARY, oc.INPUT_GATE)]
    comment = (oc.COMMENT.scheme, oc.COMMENT.value)
    return build_deidentifier(
        salt,
        options,
        keep_text_concepts=generated,
        keep_text_values=[(comment, pattern) for pattern in GENERATED_WARNINGS],
    )


class FhirExporter:
    """POSTs a result's FHIR report to the payload's configured FHIR endpoint."""

    def __init__(self, services: JobServices) -> None:
        self.services = services

    def _endpoint(self, name: str) -> FhirEndpoint | None:
        for endpoint in self.services.config.fhir_endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    def export(self, job: Job, payload: FhirExportPayload) -> None:
        from overread.service.outputs import DeliveryError, fhir_report_for_result, post_fhir
        from overread.service.verification import verification_of

        endpoint = self._endpoint(payload.fhir_endpoint)
        object_uids = [job.study_instance_uid]
        details: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempts,
            "destination_kind": "fhir",
            "destination": payload.fhir_endpoint if endpoint is None else str(endpoint),
            "resources": 0,
        }
        error: str | None = None
        cause: ServiceError | None = None
        bundle: dict[str, Any] = {}
        if endpoint is None:
            error = f"FHIR endpoint {payload.fhir_endpoint!r} is no longer configured"
        else:
            with self.services.database.session() as session:
                result = session.get(Result, payload.result_id)
                if result is None:
                    error = f"result {payload.result_id} no longer exists"
                else:
                    try:
                        bundle = fhir_report_for_result(result, verification_of(session, result.id))
                    except ServiceError as exc:  # e.g. a result stored without the header
                        error, cause = f"no FHIR report for result {result.id}: {exc}", exc
        if endpoint is None or error is not None:
            error = error or "no FHIR endpoint"
            details["status_code"] = None
            _record_failure(self.services, job, object_uids, details, error)
            raise PermanentExportError(error) from cause
        token = endpoint.bearer_token.get_secret_value() if endpoint.bearer_token else None
        details["resources"] = len(bundle.get("entry", []))
        _record_sending(self.services, job, object_uids, details)
        started = time.perf_counter()
        try:
            reply = post_fhir(
                bundle,
                endpoint.url,
                token,
                timeout=endpoint.timeout_seconds,
                headers=endpoint.headers,
            )
        except DeliveryError as exc:
            details.update(
                outcome="failed",
                status_code=getattr(exc.response, "status_code", None),
                seconds=round(time.perf_counter() - started, 6),
                error=str(exc)[:500],
            )
            _record_attempt(self.services, job, object_uids, details, succeeded=False)
            if not exc.retryable:
                raise PermanentExportError(str(exc)) from exc
            raise
        seconds = time.perf_counter() - started
        details.update(outcome="stored", status_code=reply.status_code, seconds=round(seconds, 6))
        _record_attempt(self.services, job, object_uids, details, succeeded=True)
        logger.info(
            "job %d: FHIR report posted to %s: HTTP %d in %.3f s",
            job.id,
            endpoint,
            reply.status_code,
            seconds,
        )


class Hl7Exporter:
    """Sends a result's ORU^R01 to the payload's HL7 v2 endpoint over MLLP.

    ``AA`` is delivered; ``AE``, ``AR``, no answer or a refused connection is a
    failure the worker retries. A result that cannot be reported (gone, no patient
    ID, its accession on another patient's order) fails for good.
    """

    def __init__(self, services: JobServices) -> None:
        self.services = services

    def _endpoint(self, name: str) -> Hl7Endpoint | None:
        return next((e for e in self.services.config.hl7_endpoints if e.name == name), None)

    def export(self, job: Job, payload: Hl7ExportPayload) -> None:
        from overread.service.hl7 import AcknowledgementError, result_message_for, send_message
        from overread.triage.config import TriageConfig

        endpoint = self._endpoint(payload.hl7_endpoint)
        object_uids = [job.study_instance_uid]
        control_id = f"OR{job.id}.{job.attempts}"
        details: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempts,
            "destination_kind": "hl7",
            "destination": payload.hl7_endpoint if endpoint is None else str(endpoint),
            "control_id": control_id,
            "ack": None,
        }
        error: str | None = None
        cause: Exception | None = None
        message = None
        if endpoint is None:
            error = f"HL7 endpoint {payload.hl7_endpoint!r} is no longer configured"
        else:
            critical = TriageConfig.model_validate(self.services.config.triage).alerts.critical
            with self.services.database.session() as session:
                result = session.get(Result, payload.result_id)
                if result is None:
                    error = f"result {payload.result_id} no longer exists"
                else:
                    try:
                        message, link = result_message_for(
                            session,
                            result,
                            endpoint,
                            control_id=control_id,
                            sending_facility=self.services.config.ae_title,
                            critical=critical,
                        )
                        details["order_match"] = None if link.match is None else link.match.value
                    except ServiceError as exc:
                        error, cause = f"no ORU for result {result.id}: {exc}", exc
        if endpoint is None or message is None:
            error = error or "no HL7 endpoint"
            _record_failure(self.services, job, object_uids, details, error)
            raise PermanentExportError(error) from cause
        details.update(accession_number=message.accession_number, observations=message.observations)
        _record_sending(self.services, job, object_uids, details)
        started = time.perf_counter()
        try:
            ack = send_message(
                endpoint.host,
                endpoint.port,
                message.er7,
                control_id,
                timeout=endpoint.timeout_seconds,
            )
        except (AcknowledgementError, OSError) as exc:
            answered = exc.ack if isinstance(exc, AcknowledgementError) else None
            details.update(
                outcome="failed",
                ack=None if answered is None else answered.code.value,
                seconds=round(time.perf_counter() - started, 6),
                error=str(exc)[:500],
            )
            _record_attempt(self.services, job, object_uids, details, succeeded=False)
            raise
        seconds = time.perf_counter() - started
        details.update(outcome="stored", ack=ack.code.value, seconds=round(seconds, 6))
        _record_attempt(self.services, job, object_uids, details, succeeded=True)
        logger.info(
            "job %d: ORU^R01 %s acknowledged by %s in %.3f s", job.id, control_id, endpoint, seconds
        )


class StowExporter:
    """Stores a result's DICOM objects on the payload's configured DICOMweb server.

    One STOW-RS request carries every object of the result. A server that cannot be
    reached, times out or answers 408/429/5xx is retried; one that refuses the
    request for good (another 4xx) dead-letters the job; one that stores some objects
    and refuses others is retried (the objects go again under the same UIDs).
    """

    def __init__(self, services: JobServices) -> None:
        self.services = services

    def _endpoint(self, name: str) -> StowEndpoint | None:
        for endpoint in self.services.config.stow_endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    def export(self, job: Job, payload: StowExportPayload) -> None:
        import httpx

        from overread.service.outputs import DeliveryError, stow_rs

        endpoint = self._endpoint(payload.stow_endpoint)
        details: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempts,
            "destination_kind": "stow-rs",
            "destination": payload.stow_endpoint if endpoint is None else str(endpoint),
            "objects": 0,
        }
        if endpoint is None:
            error = f"STOW-RS endpoint {payload.stow_endpoint!r} is no longer configured"
            details["status_code"] = None
            _record_failure(self.services, job, [job.study_instance_uid], details, error)
            raise PermanentExportError(error)
        with self.services.database.session() as session:
            result = session.get(Result, payload.result_id)
            artifacts = None if result is None else payload.chosen(result.artifacts)
        if artifacts is None:
            error = f"result {payload.result_id} no longer exists"
            details["status_code"] = None
            _record_failure(self.services, job, [job.study_instance_uid], details, error)
            raise InferenceError(error)
        paths = [self.services.store.path(str(a["key"])) for a in artifacts]
        object_uids = [job.study_instance_uid, *(str(a["sop_instance_uid"]) for a in artifacts)]
        details["objects"] = len(paths)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            error = f"stored result object(s) missing: {', '.join(missing)}"
            details["status_code"] = None
            _record_failure(self.services, job, object_uids, details, error)
            raise InferenceError(error)
        auth: str | tuple[str, str] | None = None
        if endpoint.bearer_token is not None:
            auth = endpoint.bearer_token.get_secret_value()
        elif endpoint.username is not None and endpoint.password is not None:
            auth = (endpoint.username, endpoint.password.get_secret_value())
        _record_sending(self.services, job, object_uids, details)
        started = time.perf_counter()
        try:
            with httpx.Client(timeout=endpoint.timeout_seconds, headers=endpoint.headers) as http:
                reply = stow_rs(paths, endpoint.url, auth, client=http)
        except DeliveryError as exc:
            response = exc.response
            details.update(
                outcome="failed",
                status_code=getattr(response, "status_code", None),
                failed=sorted(getattr(response, "failed", None) or {}),
                seconds=round(time.perf_counter() - started, 6),
                error=str(exc)[:500],
            )
            _record_attempt(self.services, job, object_uids, details, succeeded=False)
            if not exc.retryable and getattr(response, "status_code", None) != 409:
                raise PermanentExportError(str(exc)) from exc
            raise
        seconds = round(time.perf_counter() - started, 6)
        details.update(status_code=reply.status_code, seconds=seconds, stored=len(reply.stored))
        if reply.failed:
            error = (
                f"{len(reply.failed)}/{len(paths)} object(s) refused by {endpoint}: "
                + ", ".join(f"{uid} (reason {reason})" for uid, reason in reply.failed.items())
            )
            details.update(outcome="failed", failed=sorted(reply.failed), error=error[:500])
            _record_attempt(self.services, job, object_uids, details, succeeded=False)
            raise ConnectionError(error)
        details["outcome"] = "stored"
        _record_attempt(self.services, job, object_uids, details, succeeded=True)
        logger.info(
            "job %d: stored %d object(s) on %s with STOW-RS: HTTP %d in %.3f s",
            job.id,
            len(paths),
            endpoint,
            reply.status_code,
            seconds,
        )


class Exporters:
    """The exporter of each destination kind, chosen by an export job's typed payload."""

    def __init__(self, services: JobServices, associations: AssociationPool | None = None) -> None:
        self.services = services
        self.dicom_exporter = DicomExporter(services, associations)
        self.dicom: Exporter[DicomExportPayload] = self.dicom_exporter
        self.fhir: Exporter[FhirExportPayload] = FhirExporter(services)
        self.hl7: Exporter[Hl7ExportPayload] = Hl7Exporter(services)
        self.stow: Exporter[StowExportPayload] = StowExporter(services)
        self.rollouts = RolloutStore(services.database)

    def close_idle(self) -> None:
        """Release the DICOM associations idle past ``association_idle_seconds``."""
        self.dicom_exporter.associations.close_idle()

    def close(self) -> None:
        """Release every kept DICOM association (the worker stops)."""
        self.dicom_exporter.associations.close()

    def _held(self, job: Job) -> bool:
        """Hold ``job`` (nothing sent) when its model's kill switch is engaged."""
        with self.services.database.session() as session:
            switch = self.rollouts.killed(session, job.model_name, job.model_version)
            if switch is None:
                return False
            self.services.queue.hold(
                session, job.id, self.services.owner, f"held: kill switch of {switch} engaged"
            )
        logger.warning("job %d: export held, kill switch of %s engaged", job.id, switch)
        return True

    def _rolled_back(self, job: Job, result_id: int) -> bool:
        """Skip ``job`` (cancelled, audited, nothing sent) when its result is a canary's
        whose candidate was rolled back while it ran; its study goes to the active
        version instead (see :meth:`RolloutStore.skip_rolled_back_export`)."""
        return self.rollouts.skip_rolled_back_export(job.id, result_id, self.services.owner)

    def _blocked_by_review(self, job: Job, result_id: int) -> bool:
        """Hold ``job`` while its result waits for review; refuse it for good when the
        result was rejected, or when the result is not of the job's study.

        Checked when the export runs, not only when it is queued: a job queued earlier
        (a replaced result's, a requeued dead letter, one released from a kill switch)
        must never send what a reader has not released, nor another study's result.
        """
        with self.services.database.session() as session:
            result = session.get(Result, result_id)
            if result is None:
                return False  # the exporter reports a missing result
            if result.study_instance_uid != job.study_instance_uid:
                raise PermanentExportError(
                    f"result {result_id} belongs to study {result.study_instance_uid}, not "
                    f"to the job's study {job.study_instance_uid}: nothing sent"
                )
            state = session.scalar(
                select(ResultReview.state).where(ResultReview.result_id == result_id)
            )
            if state == ReviewState.REJECTED.value:
                raise PermanentExportError(f"result {result_id} was rejected by a reader")
            if state != ReviewState.PENDING.value:
                return False
            self.services.queue.hold(
                session, job.id, self.services.owner, "held: the result awaits review"
            )
        logger.info("job %d: export held, result %d awaits review", job.id, result_id)
        return True

    def export(self, job: Job, payload: ExportPayload) -> None:
        """Hand ``job`` to the exporter of its payload's kind (or hold it, when its
        model's kill switch is engaged: see :mod:`overread.service.rollout`, or its
        result awaits review: :mod:`overread.service.review`), or skip it (its result
        is a rolled-back canary's)."""
        known = (DicomExportPayload, FhirExportPayload, Hl7ExportPayload, StowExportPayload)
        if not isinstance(payload, known):
            assert_never(payload)  # a payload no exporter knows: refused, never dropped
        if self._held(job) or self._rolled_back(job, payload.result_id):
            return
        if self._blocked_by_review(job, payload.result_id):
            return
        match payload:
            case DicomExportPayload():
                self.dicom.export(job, payload)
            case FhirExportPayload():
                self.fhir.export(job, payload)
            case Hl7ExportPayload():
                self.hl7.export(job, payload)
            case StowExportPayload():
                self.stow.export(job, payload)
            case _:
                assert_never(payload)


__all__ = [
    "DicomExporter",
    "Exporter",
    "Exporters",
    "FhirExporter",
    "Hl7Exporter",
    "StowExporter",
    "export_deidentifier",
]
