"""The infer job: run the routed model on a study and store what it found.

:class:`InferenceHandler` reads the study's stored instances, runs the model once
over them, builds the derived DICOM objects (one SR for the study, overlays, SEG, the PDF
report when ``pdf_report`` is on),
and in one transaction stores the :class:`~overread.service.db.Result` (its summary
a :class:`~overread.results.ResultSummary`), audits it, puts the study on the
worklist and queues one export job per destination, each with its typed payload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.audit import AuditAction
from overread.errors import ConfigError, InferenceError, ServiceError
from overread.imaging import ImageMetadata, metadata_from_dataset, read_dataset
from overread.monitoring import StudyObservation
from overread.results import Prediction, ResultSummary
from overread.service.db import Instance, Job, Result, ResultReview, Study, StudyState, utcnow
from overread.service.handling import JobServices
from overread.service.metrics import observe_stage_timings
from overread.service.monitor.store import observe_study, store_observations
from overread.service.payloads import InferPayload
from overread.service.review import (
    FHIR_DESTINATION_PREFIX,
    HL7_DESTINATION_PREFIX,
    STOW_DESTINATION_PREFIX,
    held,
    hold_result,
    queue_exports,
    reopen_review,
    result_version,
    reviewing_routes,
    sent_predecessors,
)
from overread.service.rollout import RolloutRole, RolloutStore
from overread.service.routing import InstanceFacts, route_matches
from overread.service.runtime import (
    ArtifactBuilder,
    PipelineLike,
    PipelineProvider,
    not_analysed,
    require_ok,
)
from overread.triage.score import StudyContext

if TYPE_CHECKING:
    from overread.service.outputs.pdf import ReportContext

logger = logging.getLogger(__name__)

# The ``destination`` prefixes of FHIR, HL7 v2 (ORU^R01) and STOW-RS export jobs
# (DICOM destination names cannot contain a colon, so they never collide) are
# defined with the export queueing in :mod:`overread.service.review`.


class ReviewChangedError(ServiceError):
    """The result a re-read replaces was verified, released or otherwise reviewed
    while the re-read ran: what the re-read built (its SR's Predecessor Documents
    above all) was computed from the state before. Nothing is stored; the job fails
    retryably and runs again from the review as it is now."""


class InferenceHandler:
    """Runs infer jobs.

    Parameters
    ----------
    services
        Configuration, database, object store, queue and the worker's name.
    models
        Resolves model aliases to pipelines.
    artifacts
        Builds the DICOM objects to send (``None``: results are stored, nothing is sent).
    """

    def __init__(
        self,
        services: JobServices,
        models: PipelineProvider,
        artifacts: ArtifactBuilder | None,
    ) -> None:
        self.services = services
        self.models = models
        self.artifacts = artifacts
        # Imported here: overread.triage builds on this package's database models.
        from overread.triage import TriageConfig

        try:
            self.triage = TriageConfig.model_validate(services.config.triage)
        except ValueError as exc:
            raise ConfigError(f"invalid [triage] settings: {exc}") from None

    def _study_paths(self, job: Job, session: Session | None = None) -> list[tuple[Path, Instance]]:
        """The study's stored images the job's routes take (all of them when none
        matches), in series order; read in ``session`` when given."""
        query = (
            select(Instance)
            .where(Instance.study_instance_uid == job.study_instance_uid)
            .order_by(Instance.series_instance_uid, Instance.id)
        )
        if session is not None:
            rows = list(session.scalars(query).all())
        else:
            with self.services.database.session() as own:
                rows = list(own.scalars(query).all())
        routes = [r for r in self.services.config.routes if r.name in set(job.route.split(","))]
        if routes:
            matched = [
                r for r in rows if any(route_matches(rt, InstanceFacts.of(r)) for rt in routes)
            ]
            rows = matched or rows
        return [(self.services.store.path(r.object_key), r) for r in rows]

    def run(self, job: Job) -> list[int]:
        """Run the routed model on the study and store its result (see the module).

        Returns the ids of the DICOM export jobs it queued, which the worker sends at
        once (they are ordinary queued jobs: any worker may take them, and a failed
        send retries from the queue)."""
        started = time.perf_counter()
        payload = InferPayload.from_dict(job.payload, default_alias=job.model_name)
        alias = payload.alias
        with self.services.database.session() as session:
            existing = session.scalar(
                select(Result).where(
                    Result.study_instance_uid == job.study_instance_uid,
                    Result.model_name == job.model_name,
                    Result.model_version == job.model_version,
                )
            )
            existing_review = (
                None
                if existing is None
                else session.scalar(
                    select(ResultReview).where(ResultReview.result_id == existing.id)
                )
            )
            # What this read starts from: the result it may replace, as reviewed now.
            seen = None if existing is None else result_version(existing, existing_review)
        items = self._study_paths(job)
        replaces: int | None = None
        superseded: list[dict[str, Any]] = []
        if existing is not None:
            late = _images_not_read(existing, items)
            if payload.override_gate and _not_analysed_result(existing):
                # A reader's "analyse anyway": the not-analysed result is replaced.
                replaces = existing.id
            elif late:
                # More of the study arrived after its result: the study is read again
                # whole and a new SR supersedes the one sent (Predecessor Documents).
                replaces = existing.id
                # Only the SRs that went out: a held or rejected read's never did.
                superseded = sent_predecessors(existing, existing_review)
                logger.info(
                    "job %d: %d image(s) of study %s arrived after result %d; read again",
                    job.id,
                    len(late),
                    job.study_instance_uid,
                    existing.id,
                )
            else:
                logger.info("job %d: result %d already stored; not run again", job.id, existing.id)
                return self._finish(job, payload, existing.id, None, [])
        if not items:
            raise InferenceError(f"study {job.study_instance_uid} has no stored instances")
        paths = [p for p, _ in items]
        pipeline = self.models.get(payload.model_ref)
        if getattr(pipeline, "volumetric", False):
            return self._run_volume(
                job, payload, pipeline, items, replaces, superseded, started, seen=seen
            )
        cam_segmentation = alias in self.services.config.cam_segmentation
        explain = self.services.config.explain or cam_segmentation
        predictions = list(
            pipeline.predict(
                paths,
                explain=explain,
                trust=self.services.config.trust,
                override_gate=payload.override_gate,
            )
        )
        require_ok(predictions, paths)
        for prediction in predictions:
            observe_stage_timings(prediction.timings)
        modelled = time.perf_counter()
        # One header read per image serves the SR, the worklist context and the FHIR
        # facts; overlays need the pixels too.
        if not_analysed(predictions):
            readings = _refused_readings(predictions, paths)
        else:
            readings = [
                (prediction, read_dataset(path, pixels=self.services.config.explain))
                for prediction, (path, _) in zip(predictions, items, strict=True)
                if prediction.ok
            ]
            # Images of the study the gate refused: the report says they were not
            # analysed (their headers only; an unreadable one is left out).
            refused = [
                (p, path)
                for p, (path, _) in zip(predictions, items, strict=True)
                if not p.ok and p.gate is not None and p.gate.refused
            ]
            if refused:
                readings += _refused_readings([p for p, _ in refused], [q for _, q in refused])
        first = items[0][1]
        calibration = self._site_calibration(pipeline, predictions, readings, items)
        observations = observe_study(
            readings,
            calling_ae=first.calling_ae,
            institution=first.institution,
            settings=self.services.config.monitoring,
        )
        header = metadata_from_dataset(readings[0][1]) if readings else ImageMetadata()
        context = _study_context(items, header)
        artifacts: list[dict[str, Any]] = []
        # A shadow's result is never sent: no DICOM objects are built for it.
        if self.artifacts is not None and payload.role is not RolloutRole.SHADOW:
            options: dict[str, Any] = {}
            if superseded:
                options["predecessors"] = [self._sr_header(r, job) for r in superseded]
            if calibration is not None:
                options["calibration"] = calibration
            built_objects = self.artifacts.build_study(
                readings,
                cam_segmentation=cam_segmentation,
                pdf_report=self._report_context(pipeline, predictions),
                **options,
            )
            for dataset in built_objects:
                artifacts.append(self._store_dataset(dataset))
        built = time.perf_counter()
        from overread.service.outputs.fhir import study_header

        summary = ResultSummary(
            alias=alias,
            instances=tuple(predictions),
            sop_instance_uids=tuple(row.sop_instance_uid for _, row in items),
            study=study_header(header),
            timings=_stage_timings(predictions, modelled - started, built - modelled),
            calibration=calibration,
        ).to_dict()
        if superseded:
            summary["superseded"] = superseded
        exports = self._finish(
            job,
            payload,
            None,
            summary,
            artifacts,
            context,
            replaces=replaces,
            observations=observations,
            seen=seen,
        )
        logger.info(
            "job %d: %s %s on study %s: %d prediction(s), %d object(s) to send in %.3f s",
            job.id,
            job.model_name,
            job.model_version,
            job.study_instance_uid,
            len(predictions),
            len(artifacts),
            time.perf_counter() - started,
        )
        return exports

    def _site_calibration(
        self,
        pipeline: PipelineLike,
        predictions: Sequence[Prediction],
        readings: Sequence[tuple[Prediction, Any]],
        items: Sequence[tuple[Path, Instance]],
    ) -> dict[str, Any] | None:
        """Apply the package's calibration for the study's site to its findings (in
        place) and say which was applied; ``None`` when nothing was analysed or the
        service does not choose calibrations by site.

        Institution Name, Station Name and calling AE are all of one image
        (:func:`_site_image`), never a mix of two."""
        settings = self.services.config.site_calibration
        if not settings.enabled or not any(p.ok for p in predictions):
            return None
        from overread.inference.site_calibration import apply_site_calibration

        row, header = _site_image(readings, items)
        station = str(header.get("StationName", "") or "") if header is not None else ""
        institution = row.institution or (
            str(header.get("InstitutionName", "") or "") if header is not None else ""
        )
        match = settings.match(
            institution=institution, station=station, calling_ae=row.calling_ae or ""
        )
        source = settings.source.value
        if match.unmapped:
            # Never taken as a site name as it is: the global calibration, said loudly.
            from overread.inference.site_calibration import unmapped_site
            from overread.service.metrics import observe_unmapped_site

            applied = unmapped_site(match.value, source, pipeline.package)
            if pipeline.package.manifest.site_calibration is not None:
                logger.warning(
                    "site calibration: %s %r is not in [service.site_calibration] sites; "
                    "the study gets the global calibration of %s %s",
                    source,
                    match.value,
                    pipeline.package.name,
                    pipeline.package.version,
                )
                observe_unmapped_site(source)
        else:
            applied = apply_site_calibration(
                predictions, pipeline.package, match.site or "", source=source
            )
        return applied.to_dict()

    def _run_volume(
        self,
        job: Job,
        payload: InferPayload,
        pipeline: Any,
        items: list[tuple[Path, Instance]],
        replaces: int | None,
        superseded: list[dict[str, Any]],
        started: float,
        *,
        seen: str | None = None,
    ) -> list[int]:
        """A CT segmentation or detection model: per series, SEG and SR (see
        :mod:`overread.service.infer_volume`); a re-read's SRs supersede those sent
        before (``superseded``), as the X-ray path's SR does. Only the SRs a new SR
        names are recorded as superseded (a series no longer read has no new SR)."""
        from overread.service.infer_volume import run_volume_study
        from overread.service.outputs.fhir import study_header

        header = metadata_from_dataset(read_dataset(items[0][0], pixels=False))
        study = study_header(header)
        planar = bool(getattr(pipeline, "planar", False))
        predecessors = [self._sr_header(r, job) for r in superseded]
        predictions, datasets = run_volume_study(
            pipeline,
            items,
            session_factory=self.services.database.session,
            model_name=job.model_name,
            study=study,
            build=payload.role is not RolloutRole.SHADOW,
            predecessors=predecessors,
            override_gate=payload.override_gate,
        )
        modelled = time.perf_counter()
        by_path = {str(path): path for path, _ in items}
        if (
            not_analysed(predictions)
            and self.artifacts is not None
            and payload.role is not RolloutRole.SHADOW
        ):
            # Nothing could be analysed: the report says why, once per series (a planar
            # package: per image, each with its own header), and supersedes what a
            # read before it sent, as the X-ray path's does.
            readings = _refused_readings(
                predictions,
                [
                    by_path.get(str(p.path), items[0][0]) if planar else items[0][0]
                    for p in predictions
                ],
            )
            options: dict[str, Any] = {"predecessors": predecessors} if predecessors else {}
            datasets = list(self.artifacts.build_study(readings, **options))
        artifacts = [self._store_dataset(dataset) for dataset in datasets]
        built = time.perf_counter()
        summary = ResultSummary(
            alias=payload.alias,
            instances=tuple(predictions),
            sop_instance_uids=_volume_sop_instance_uids(predictions, items, planar=planar),
            study=study,
            timings=_stage_timings(predictions, modelled - started, built - modelled),
        ).to_dict()
        # A volume result is one entry per series: which images it read is kept
        # beside them, so a complete-again study is not taken for one that grew.
        summary["read_sop_instance_uids"] = [row.sop_instance_uid for _, row in items]
        named = _named_predecessors(datasets)
        superseded = [r for r in superseded if str(r.get("sop_instance_uid") or "") in named]
        if superseded:
            summary["superseded"] = superseded
        exports = self._finish(
            job,
            payload,
            None,
            summary,
            artifacts,
            _study_context(items, header),
            replaces=replaces,
            seen=seen,
        )
        logger.info(
            "job %d: %s %s on study %s: %d series, %d object(s) to send in %.3f s",
            job.id,
            job.model_name,
            job.model_version,
            job.study_instance_uid,
            len(predictions),
            len(artifacts),
            time.perf_counter() - started,
        )
        return exports

    def _report_context(
        self, pipeline: PipelineLike, predictions: Sequence[Prediction]
    ) -> ReportContext | None:
        """What the PDF report needs beyond the predictions (``None``: no PDF report):
        the model card summary and the findings at their critical-alert thresholds."""
        if not self.services.config.pdf_report:
            return None
        from overread.models.card import ModelCardSummary
        from overread.service.outputs.pdf import ReportContext
        from overread.triage import critical_findings

        critical = {
            label
            for prediction in predictions
            if prediction.ok
            for label, _, _ in critical_findings(prediction.findings, self.triage.alerts)
        }
        return ReportContext(
            card=ModelCardSummary.from_package(pipeline.package), critical=frozenset(critical)
        )

    def _sr_header(self, reference: dict[str, Any], job: Job) -> Any:
        """The stored header of an SR being superseded, or a stand-in with its UIDs."""
        from overread.service.review import _reference_dataset

        try:
            return pydicom.dcmread(
                self.services.store.path(str(reference["key"])), stop_before_pixels=True
            )
        except (OSError, KeyError, pydicom.errors.InvalidDicomError):
            return _reference_dataset(reference, job.study_instance_uid)

    def _store_dataset(self, dataset: Any) -> dict[str, Any]:
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        stored = self.services.store.put(buffer.getvalue())
        return {
            "key": stored.key,
            "sop_class_uid": str(dataset.SOPClassUID),
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "series_instance_uid": str(dataset.get("SeriesInstanceUID", "")),
            "modality": str(dataset.get("Modality", "")),
        }

    def _finish(
        self,
        job: Job,
        payload: InferPayload,
        result_id: int | None,
        summary: dict[str, Any] | None,
        artifacts: list[dict[str, Any]],
        context: StudyContext | None = None,
        *,
        replaces: int | None = None,
        observations: Sequence[StudyObservation] = (),
        seen: str | None = None,
    ) -> list[int]:
        """Store the result, audit it, put the study on the worklist and queue exports;
        return the ids of the new DICOM export jobs.

        All of it is one transaction with marking the job done: a worker killed
        half-way leaves nothing behind but a job to run again. ``seen``: the replaced
        result's :func:`~overread.service.review.result_version` when the job read it;
        if a reader or a time-out changed it since, :class:`ReviewChangedError`.
        """
        from overread.triage import triage_result

        dicom_jobs: list[int] = []
        with self.services.database.session() as session:
            # The study row first, as the study's routing does (see _completed_again):
            # both lock it before any job row, so neither waits on the other's.
            study_state = self._lock_study(session, job) if summary is not None else None
            if result_id is None:
                replaced = None if replaces is None else self._lock_replaced(session, replaces)
                if replaced is not None and seen is not None:
                    review = session.scalar(
                        select(ResultReview).where(ResultReview.result_id == replaced.id)
                    )
                    if result_version(replaced, review) != seen:
                        raise ReviewChangedError(
                            f"study {job.study_instance_uid}: result {replaced.id} was "
                            "reviewed or released while it was read again; read again"
                        )
                if replaced is not None:
                    # A reader's verification (or a time-out's release) was of the read
                    # replaced: the new read starts unreviewed (held again below where
                    # the route requires review), and its SR goes out UNVERIFIED.
                    reopen_review(
                        session,
                        replaced,
                        now=utcnow(),
                        actor=f"worker:{self.services.owner}",
                    )
                    result = replaced
                    result.summary = summary or {}
                    result.artifacts = artifacts
                    result.created_at = utcnow()
                else:
                    result = Result(
                        job_id=job.id,
                        study_instance_uid=job.study_instance_uid,
                        model_name=job.model_name,
                        model_version=job.model_version,
                        summary=summary or {},
                        artifacts=artifacts,
                        created_at=utcnow(),
                    )
                    session.add(result)
                session.flush()
                result_id = result.id
                role = payload.role.value if payload.role is not None else ""
                store_observations(session, result.id, observations, role=role)
                details: dict[str, Any] = {
                    "job_id": job.id,
                    "result_id": result.id,
                    "model": job.model_name,
                    "version": job.model_version,
                }
                if payload.override_gate:
                    details["override_gate"] = True
                if summary and summary.get("calibration"):
                    details["calibration"] = summary["calibration"]
                if _not_analysed_summary(summary or {}):
                    details["not_analysed"] = True
                if payload.role is not None:
                    details["rollout"] = payload.role.value
                    RolloutStore(self.services.database).mark_result(
                        session, result, alias=payload.alias, role=payload.role
                    )
                self.services.audit(
                    session,
                    action=AuditAction.INFERENCE,
                    object_uids=[job.study_instance_uid],
                    details=details,
                )
                if payload.role is not RolloutRole.SHADOW:
                    # A shadow's findings reach no worklist and raise no alert.
                    triage_result(
                        session, result, context or _EMPTY_CONTEXT, self.triage, now=utcnow()
                    )
                has_artifacts = bool(artifacts)
            else:
                stored = session.get(Result, result_id)
                has_artifacts = bool(stored is not None and stored.artifacts)
            # A study nothing was analysed of has no findings to report to FHIR or HL7 (the SR
            # and the worklist say why); its export would only fail.
            reported = session.get(Result, result_id)
            analysed = reported is None or not _not_analysed_result(reported)
            # A shadow model's result is stored and never exported (nor held).
            shadow = payload.role is RolloutRole.SHADOW
            # A route that requires review holds an analysed result: stored, triaged and
            # alerted above, but nothing goes out until a reader accepts it.
            gate = reviewing_routes(self.services.config, job.route) if analysed else []
            if reported is not None and gate and summary is not None and not shadow:
                hold_result(
                    session,
                    reported,
                    gate,
                    now=utcnow(),
                    actor=f"worker:{self.services.owner}",
                )
            if (
                reported is not None
                and not shadow
                and not held(session, reported.id)
                and (has_artifacts or analysed)
            ):
                queue_exports(
                    session,
                    self.services.queue,
                    self.services.config,
                    job=job,
                    result=reported,
                    destinations=payload.destinations,
                    analysed=analysed,
                    dicom_jobs=dicom_jobs,
                )
            if replaces is not None and reported is not None and not held(session, reported.id):
                # The replaced result went out already ("not analysed"): its exports,
                # whatever became of them, go again with the new result.
                self.services.queue.requeue_exports(
                    session,
                    study_instance_uid=job.study_instance_uid,
                    model_name=job.model_name,
                    model_version=job.model_version,
                )
                dicom_jobs = self.services.queue.queued_dicom_exports(
                    session,
                    study_instance_uid=job.study_instance_uid,
                    model_name=job.model_name,
                    model_version=job.model_version,
                )
            self.services.queue.mark_succeeded(session, job.id, self.services.owner)
            if summary is not None and self._completed_again(session, job, summary, study_state):
                # Images came while this ran and the study was completed again
                # meanwhile (whose routing saw the job running): read it again.
                self.services.queue.requeue_finished(session, job.id)
        return dicom_jobs

    @staticmethod
    def _lock_replaced(session: Session, result_id: int) -> Result | None:
        """The result a re-read replaces, its review row then its own locked until the
        transaction ends (PostgreSQL), in the order a reader's verdict locks them: a
        verdict is either seen by the re-read or waits for it and finds it stale."""
        session.scalar(
            select(ResultReview.id).where(ResultReview.result_id == result_id).with_for_update()
        )
        return session.scalar(select(Result).where(Result.id == result_id).with_for_update())

    @staticmethod
    def _lock_study(session: Session, job: Job) -> str | None:
        """The study's state, its row locked until the transaction ends (PostgreSQL)."""
        return session.scalar(
            select(Study.state)
            .where(Study.study_instance_uid == job.study_instance_uid)
            .with_for_update()
        )

    def _completed_again(
        self, session: Session, job: Job, summary: dict[str, Any], state: str | None
    ) -> bool:
        """Whether the study, complete again, has images this run did not read.

        ``state`` was read with the study row locked at the start of the finishing
        transaction; the study's routing locks the row before it looks at this job,
        so either it sees this job finished (and queues it again itself) or this
        sees the study complete again."""
        if state == StudyState.RECEIVING.value:
            return False  # its completion re-queues the job
        read = _read_uids(summary)
        return any(
            row.sop_instance_uid not in read and not _derived_object(row.sop_class_uid)
            for _, row in self._study_paths(job, session)
        )


def _site_image(
    readings: Sequence[tuple[Prediction, Any]], items: Sequence[tuple[Path, Instance]]
) -> tuple[Instance, Any | None]:
    """The one image whose facts name the study's site, and its header: the first
    image read for the report (its stored row: Institution Name and calling AE), else
    the study's first image (its header read here; ``None`` when unreadable)."""
    if readings:
        header = readings[0][1]
        uid = str(header.get("SOPInstanceUID", "") or "")
        row = next((r for _, r in items if r.sop_instance_uid == uid), None)
        if row is not None:
            return row, header
    path, row = items[0]
    uid = row.sop_instance_uid
    header = next((h for _, h in readings if str(h.get("SOPInstanceUID", "") or "") == uid), None)
    if header is None:
        try:
            header = read_dataset(path, pixels=False)
        except Exception as exc:  # no header: the row's facts only
            logger.info("%s: no header for the study's site: %s", path, exc)
    return row, header


def _volume_sop_instance_uids(
    predictions: Sequence[Prediction], items: Sequence[tuple[Path, Instance]], *, planar: bool
) -> tuple[str, ...]:
    """The SOP Instance UID each prediction of a volume or planar result speaks for.

    A planar package's prediction is of one image: its own UID (else that of the
    file it read); a CT prediction is of a series: one image of it (``""`` unknown)."""
    by_series = {row.series_instance_uid: row.sop_instance_uid for _, row in items}
    by_path = {str(path): row.sop_instance_uid for path, row in items}
    uids = []
    for prediction in predictions:
        meta = getattr(prediction, "metadata", None)
        if planar:
            own = str(getattr(meta, "sop_instance_uid", "") or "")
            uids.append(own or by_path.get(str(prediction.path), ""))
        else:
            series = str(getattr(meta, "series_instance_uid", "") or "")
            uids.append(by_series.get(series, ""))
    return tuple(uids)


def _named_predecessors(datasets: Sequence[Any]) -> set[str]:
    """SOP Instance UIDs the Predecessor Documents of ``datasets`` name."""
    return {
        str(ref.ReferencedSOPInstanceUID)
        for dataset in datasets
        for study in dataset.get("PredecessorDocumentsSequence", None) or []
        for series in study.get("ReferencedSeriesSequence", None) or []
        for ref in series.get("ReferencedSOPSequence", None) or []
    }


def _images_not_read(result: Result, items: Sequence[tuple[Path, Instance]]) -> list[str]:
    """SOP Instance UIDs of the study's stored images that ``result`` did not read."""
    read = _read_uids(result.summary or {})
    ours = {str(a.get("sop_instance_uid") or "") for a in result.artifacts or []}
    return [
        row.sop_instance_uid
        for _, row in items
        if row.sop_instance_uid not in read | ours and not _derived_object(row.sop_class_uid)
    ]


#: SOP classes of reports and derived objects (SR, SEG, encapsulated PDF): such an
#: object arriving after a result (the PACS forwarding the gateway's own SR back into
#: the study, say) is not an image the model missed and never triggers a re-read.
_DERIVED_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.66.",  # segmentation, registration, fiducials
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)


def _derived_object(sop_class_uid: str | None) -> bool:
    return (sop_class_uid or "").startswith(_DERIVED_PREFIXES)


def _read_uids(summary: dict[str, Any]) -> set[str]:
    """The SOP Instance UIDs a stored summary's result read (a volume result lists
    them apart from its per-series entries)."""
    return set(summary.get("read_sop_instance_uids") or summary.get("sop_instance_uids") or ())


def _not_analysed_summary(summary: dict[str, Any]) -> bool:
    """Whether a stored summary is of a study the input gate refused entirely."""
    return not_analysed(ResultSummary.from_dict(summary).instances)


def _not_analysed_result(result: Result) -> bool:
    return _not_analysed_summary(result.summary or {})


def _refused_readings(
    predictions: Sequence[Prediction], paths: Sequence[Path]
) -> list[tuple[Prediction, Any]]:
    """The headers of a refused study's images (those that can be read at all)."""
    readings = []
    for prediction, path in zip(predictions, paths, strict=True):
        try:
            readings.append((prediction, read_dataset(path, pixels=False)))
        except Exception as exc:  # an unreadable file has no header to report on
            logger.info("%s: no header for the not-analysed report: %s", path, exc)
    return readings


def _stage_timings(
    predictions: Sequence[Prediction], model_seconds: float, artifact_seconds: float
) -> dict[str, float]:
    """Seconds per stage of an infer job, summed over the study's images.

    ``read``, ``preprocess``, ``inference``, ``postprocess`` and ``explain`` come from
    the pipeline; ``model_total`` is the wall time of the whole model call (waiting
    for a shared batch included) and ``artifacts`` that of reading the headers and
    building and storing the SR, overlays and SEG.
    """
    totals: dict[str, float] = {}
    for prediction in predictions:
        for stage, seconds in prediction.timings.items():
            totals[str(stage)] = totals.get(str(stage), 0.0) + float(seconds)
    totals = {k: round(v, 6) for k, v in totals.items()}
    totals["model_total"] = round(model_seconds, 6)
    totals["artifacts"] = round(artifact_seconds, 6)
    return totals


def _study_context(items: list[tuple[Path, Instance]], header: ImageMetadata) -> StudyContext:
    """Department, patient age and arrival time of a study, from its first header."""
    from overread.triage import department_key, dicom_age_years

    received = min((row.received_at for _, row in items), default=None)
    department = header.institutional_department_name or header.requesting_service or ""
    return StudyContext(
        department=department_key(department),
        patient_age=dicom_age_years(header.patient_age or ""),
        received_at=received,
    )


_EMPTY_CONTEXT = StudyContext()


__all__ = [
    "FHIR_DESTINATION_PREFIX",
    "HL7_DESTINATION_PREFIX",
    "STOW_DESTINATION_PREFIX",
    "InferenceHandler",
    "ReviewChangedError",
    "request_gate_override",
]


def request_gate_override(database: Any, study_instance_uid: str) -> list[int]:
    """Queue again, with ``override_gate``, every infer job whose result for the study
    is "not analysed"; return their ids (``[]`` when nothing was refused).

    The job runs the model on the refused images and replaces the not-analysed result
    with one marked outside the model's intended use (see :meth:`InferenceHandler.run`).
    """
    from overread.service.db import JobState

    now = utcnow()
    queued: list[int] = []
    with database.session() as session:
        results = session.scalars(
            select(Result).where(Result.study_instance_uid == study_instance_uid)
        ).all()
        for result in results:
            if not _not_analysed_result(result):
                continue
            job = session.get(Job, result.job_id)
            if job is None or job.state in (JobState.QUEUED.value, JobState.RUNNING.value):
                continue
            job.payload = {**(job.payload or {}), "override_gate": True}
            job.state = JobState.QUEUED.value
            job.attempts = 0
            job.next_attempt_at = now
            job.started_at = None  # a fresh retry period
            job.finished_at = None
            job.lease_owner = None
            job.lease_expires_at = None
            job.error = None
            job.updated_at = now
            queued.append(job.id)
    return queued
