"""The infer job of a volumetric (CT segmentation or detection) model.

The study's routed instances are grouped into series and each series runs through
the :class:`~overread.inference.volume.VolumePipeline`; each analysed series gives a
DICOM SEG (segmentation packages) and a TID 1500 SR with the nodules'
measurements. When the gateway holds an earlier result of the same model for the
same patient (Patient ID and issuer as stored with the result, an earlier study
date), each nodule is compared with that latest prior's nodules
(:func:`overread.inference.nodules.compare_with_prior`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.errors import InferenceError
from overread.inference.nodules import compare_with_prior
from overread.results import GateVerdict, Prediction, Region, ResultSummary, StudyHeader
from overread.service.db import Instance, Result

logger = logging.getLogger(__name__)


def latest_prior_regions(
    session: Session, model_name: str, study: StudyHeader
) -> tuple[str, list[Region]] | None:
    """The nodules of the latest earlier result of ``model_name`` for the same patient.

    ``None`` when there is none, or the patient cannot be identified, or this study
    has no date (a prior must be dated before it: a later or undated study never
    counts). Shadow results are never priors.
    """
    if not study.patient_id or not study.study_date:
        return None  # no patient, or no date to say which study came first
    from overread.service.rollout import not_shadow

    rows = session.scalars(
        select(Result).where(
            Result.model_name == model_name,
            Result.study_instance_uid != study.study_instance_uid,
            not_shadow(),
        )
    ).all()
    best: tuple[str, str, Result] | None = None
    for row in rows:
        summary = ResultSummary.from_dict(row.summary)
        other = summary.study
        if other is None or other.patient_id != study.patient_id:
            continue
        if other.issuer_of_patient_id != study.issuer_of_patient_id:
            continue
        if not other.study_date or other.study_date >= study.study_date:
            continue  # only a study dated before this one is a prior
        key = (other.study_date, row.created_at.isoformat())
        if best is None or key > (best[0], best[1]):
            best = (key[0], key[1], row)
    if best is None:
        return None
    summary = ResultSummary.from_dict(best[2].summary)
    regions = [r for p in summary.instances if p.ok for r in p.regions or []]
    return best[2].study_instance_uid, regions


def run_volume_study(
    pipeline: Any,
    items: Sequence[tuple[Path, Instance]],
    *,
    session_factory: Any,
    model_name: str,
    study: StudyHeader,
    build: bool,
    predecessors: Sequence[Any] = (),
    override_gate: bool = False,
) -> tuple[list[Prediction], list[Any]]:
    """Predictions (one per series) and the DICOM objects to store (SEG, SR).

    ``build`` false (a shadow model) makes no objects. ``predecessors``: the SRs an
    earlier read of the study sent (their headers), when the study is read again
    because more of it arrived: each series' new SR supersedes those of the same
    series (a stand-in header that names no series: every new SR supersedes it). When no series of the study
    can be analysed (not CT, a single slice, slices that do not make a volume), each
    series' prediction is marked refused with its reason and no object is made: the
    study is "not analysed" (:func:`overread.service.runtime.not_analysed`), since
    running it again would fail the same way. A planar package's images pass its
    input gate first (``override_gate``: a reader's "analyse anyway"), and a refused
    image keeps the gate's verdict.
    """
    from overread.service.outputs.volume import build_volume_outputs, source_series

    paths = [path for path, _ in items]
    planar = bool(getattr(pipeline, "planar", False))
    outputs = (
        pipeline.predict_series(paths, override_gate=override_gate)
        if planar
        else pipeline.predict_series(paths)
    )
    if not outputs:
        raise InferenceError("the volumetric pipeline returned no predictions")
    if not any(o.prediction.ok for o in outputs):
        for output in outputs:
            prediction = output.prediction
            if prediction.gate is not None and prediction.gate.refused:
                continue  # the input gate's own verdict, reasons and all
            reason = f"{prediction.path}: {prediction.error or 'not analysed'}"
            prediction.gate = GateVerdict(status="refuse", reasons=(reason,))
        logger.info(
            "no series of the study could be analysed: %s",
            "; ".join(str(o.prediction.gate.reason) for o in outputs if o.prediction.gate),
        )
        return [o.prediction for o in outputs], []
    with session_factory() as session:
        prior = latest_prior_regions(session, model_name, study)
    datasets: list[Any] = []
    baseline = bool(pipeline.package.manifest.metrics.get("baseline"))
    for output in outputs:
        prediction = output.prediction
        if not prediction.ok:
            continue
        if prior is not None and prediction.regions is not None:
            prediction.regions = compare_with_prior(
                prediction.regions, prior[1], prior_study=prior[0]
            )
        if build:
            sources = output.source_datasets()
            series = {str(ds.SeriesInstanceUID) for ds in sources[:1]}
            datasets.extend(
                build_volume_outputs(
                    prediction,
                    sources,
                    output.label_map,
                    output.labels,
                    baseline=baseline,
                    predecessors=[
                        p for p in predecessors if not source_series(p) or source_series(p) & series
                    ],
                    planar=planar,
                )
            )
    return [o.prediction for o in outputs], datasets


__all__ = ["latest_prior_regions", "run_volume_study"]
