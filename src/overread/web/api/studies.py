"""Study routes: assembled studies, their series, model results, findings and FHIR report.

Results and reports are PHI-bearing views: each is audited (``view``). The FHIR
report names the patient (``subject``) and the order (``basedOn``, the accession
number) only for roles holding ``view_phi`` or ``export_results`` (a RIS or EHR
interface account needs them to file the report); for other roles those elements
are left out of every resource.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from overread.audit import AuditAction
from overread.errors import OverreadError
from overread.results import FindingResult, Prediction, ResultSummary
from overread.security import Permission, Principal, redact_phi
from overread.service.db import Instance, Result, Study, StudyState
from overread.service.infer import request_gate_override
from overread.service.rollout import not_shadow
from overread.triage.intake import merge_findings
from overread.triage.schema import WorklistItem
from overread.web.api.guards import caller, context, not_found, page_params, route
from overread.web.api.schemas import (
    UID_PATTERN,
    CompleteOut,
    FindingOut,
    InstanceFindingsOut,
    OverrideOut,
    Page,
    ResultOut,
    SeriesOut,
    StudyDetail,
    StudyFindings,
    StudyOut,
)
from overread.web.context import WebContext


def _uid() -> Any:
    return Path(pattern=UID_PATTERN, description="Study Instance UID")


def study_out(study: Study) -> StudyOut:
    """The API view of a study row."""
    return StudyOut(
        study_instance_uid=study.study_instance_uid,
        state=study.state,
        instance_count=study.instance_count,
        first_instance_at=study.first_instance_at,
        last_instance_at=study.last_instance_at,
        completed_at=study.completed_at,
        complete_reason=study.complete_reason,
        images_purged_at=study.images_purged_at,
        results_purged_at=study.results_purged_at,
    )


def _findings(prediction: Prediction) -> list[FindingOut]:
    return [FindingOut.of(f) for f in prediction.findings]


def result_out(result: Result) -> ResultOut:
    """The API view of a stored result: one entry per image, paths left out."""
    summary = ResultSummary.from_dict(result.summary)
    instances = [
        InstanceFindingsOut(
            sop_instance_uid=summary.sop_instance_uid(i),
            ok=prediction.ok,
            error=prediction.error,
            findings=_findings(prediction),
        )
        for i, prediction in enumerate(summary.instances)
    ]
    return ResultOut(
        id=result.id,
        job_id=result.job_id,
        model_name=result.model_name,
        model_version=result.model_version,
        created_at=result.created_at,
        instances=instances,
        artifacts=[
            {k: a.get(k) for k in ("sop_class_uid", "sop_instance_uid", "modality")}
            for a in result.artifacts or []
            if isinstance(a, dict)
        ],
    )


def _require_study(session: Session, uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        raise not_found(f"study {uid}")
    return study


def _results(session: Session, uid: str, model: str | None) -> list[Result]:
    query = select(Result).where(Result.study_instance_uid == uid, not_shadow())
    if model:
        query = query.where(Result.model_name == model)
    return list(session.scalars(query.order_by(Result.id)).all())


def merged_findings(result: Result) -> list[FindingResult]:
    """A result's findings merged over its successfully read images."""
    usable = ResultSummary.from_dict(result.summary).usable()
    return merge_findings(prediction.findings for _, prediction in usable)


def _strip_identity(bundle: dict[str, Any]) -> dict[str, Any]:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        resource.pop("subject", None)
        resource.pop("basedOn", None)
    return bundle


def fhir_bundle(ctx: WebContext, uid: str, model: str | None, identified: bool) -> dict[str, Any]:
    """The FHIR R4 transaction Bundle of a study's latest result of each model (or of ``model``).

    Built by :mod:`overread.service.outputs.fhir` from what the gateway stored with
    each result (the findings of every image, merged as for the SR, and the study's
    header facts), so the report served is the one the gateway exports. Without
    ``identified`` the patient (``subject``) and the order (``basedOn``) are removed.
    """
    from overread.service.outputs.fhir import (
        ResultNotFoundError,
        fhir_report_for_result,
        fhir_report_for_study,
    )

    with ctx.database.session() as session:
        _require_study(session, uid)
        try:
            if model:
                results = _results(session, uid, model)
                if not results:
                    raise not_found(f"a result for study {uid} from model {model}")
                bundle = fhir_report_for_result(results[-1])
            else:
                bundle = fhir_report_for_study(session, uid)
        except ResultNotFoundError as exc:
            raise not_found(str(exc)) from None
        except OverreadError as exc:
            raise HTTPException(status_code=409, detail=f"study {uid}: {exc}") from None
    return bundle if identified else _strip_identity(bundle)


router = APIRouter(prefix="/api/studies", tags=["studies"])


@route(router, "GET", "", response_model=Page[StudyOut], permission=Permission.VIEW_RESULTS)
def list_studies(
    state: StudyState | None = Query(default=None, description="Assembly state"),
    page: tuple[int, int] = Depends(page_params(200)),
    ctx: WebContext = Depends(context),
) -> Page[StudyOut]:
    """Studies, most recently received first."""
    limit, offset = page
    conditions = [Study.state == state.value] if state is not None else []
    with ctx.database.session() as session:
        total = session.scalar(select(func.count()).select_from(Study).where(*conditions))
        rows = session.scalars(
            select(Study)
            .where(*conditions)
            .order_by(Study.last_instance_at.desc(), Study.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        items = [study_out(s) for s in rows]
    return Page[StudyOut](items=items, total=int(total or 0), limit=limit, offset=offset)


@route(
    router,
    "GET",
    "/{study_instance_uid}",
    response_model=StudyDetail,
    permission=Permission.VIEW_RESULTS,
)
def get_study(
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> StudyDetail:
    """One study: its series, calling AEs, results and worklist standing."""
    access = ctx.access
    uid = study_instance_uid
    with ctx.database.session() as session:
        study = _require_study(session, uid)
        instances = session.scalars(
            select(Instance)
            .where(Instance.study_instance_uid == uid)
            .order_by(Instance.series_instance_uid, Instance.id)
        ).all()
        series: dict[str, SeriesOut] = {}
        for row in instances:
            entry = series.get(row.series_instance_uid)
            if entry is None:
                entry = series[row.series_instance_uid] = SeriesOut(
                    series_instance_uid=row.series_instance_uid,
                    modality=row.modality,
                    body_part=row.body_part,
                    view_position=row.view_position,
                    series_description=row.series_description,
                    instance_count=0,
                    sop_class_uids=[],
                )
            entry.instance_count += 1
            if row.sop_class_uid not in entry.sop_class_uids:
                entry.sop_class_uids.append(row.sop_class_uid)
        results = session.scalar(
            select(func.count())
            .select_from(Result)
            .where(Result.study_instance_uid == uid, not_shadow())
        )
        item = session.scalar(select(WorklistItem).where(WorklistItem.study_instance_uid == uid))
        detail = StudyDetail(
            **study_out(study).model_dump(),
            series=list(series.values()),
            calling_aes=sorted({r.calling_ae for r in instances}),
            result_count=int(results or 0),
            worklist_state=item.state if item is not None else None,
            score=item.score if item is not None else None,
        )
    access.record(who, AuditAction.VIEW, object_uids=[uid], details={"view": "study"})
    return detail


@route(
    router,
    "GET",
    "/{study_instance_uid}/results",
    response_model=list[ResultOut],
    permission=Permission.VIEW_RESULTS,
)
def study_results(
    study_instance_uid: str = _uid(),
    model: str | None = Query(default=None, max_length=128, description="Model name"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """The model results stored for a study, oldest first (404 for an unknown study)."""
    access = ctx.access
    with ctx.database.session() as session:
        _require_study(session, study_instance_uid)
        results = [result_out(r) for r in _results(session, study_instance_uid, model)]
    access.record(
        who,
        AuditAction.VIEW,
        object_uids=[study_instance_uid],
        details={"view": "results", "count": len(results)},
    )
    return JSONResponse([redact_phi(r, who) for r in results])


@route(
    router,
    "GET",
    "/{study_instance_uid}/findings",
    response_model=list[StudyFindings],
    permission=Permission.VIEW_RESULTS,
)
def study_findings(
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> list[StudyFindings]:
    """Per model result, the study's findings merged over its images."""
    access = ctx.access
    with ctx.database.session() as session:
        _require_study(session, study_instance_uid)
        out = [
            StudyFindings(
                study_instance_uid=study_instance_uid,
                model_name=r.model_name,
                model_version=r.model_version,
                result_id=r.id,
                findings=[FindingOut.of(f) for f in merged_findings(r)],
            )
            for r in _results(session, study_instance_uid, None)
        ]
    access.record(
        who, AuditAction.VIEW, object_uids=[study_instance_uid], details={"view": "findings"}
    )
    return out


@route(
    router,
    "GET",
    "/{study_instance_uid}/fhir",
    response_model=dict[str, Any],
    permission=Permission.VIEW_RESULTS,
    responses={
        404: {"description": "Unknown study, or no stored result"},
        409: {"description": "The stored result cannot be reported (no patient ID)"},
    },
)
async def study_fhir(
    study_instance_uid: str = _uid(),
    model: str | None = Query(default=None, max_length=128, description="Model name"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> dict[str, Any]:
    """The FHIR R4 transaction Bundle (DiagnosticReport + an Observation per finding)."""
    access = ctx.access
    identified = who.can(Permission.VIEW_PHI) or who.can(Permission.EXPORT_RESULTS)
    bundle = await run_in_threadpool(fhir_bundle, ctx, study_instance_uid, model, identified)
    await run_in_threadpool(
        access.record,
        who,
        AuditAction.VIEW,
        object_uids=[study_instance_uid],
        details={"view": "fhir", "identified": identified},
    )
    return bundle


@route(
    router,
    "POST",
    "/{study_instance_uid}/complete",
    response_model=CompleteOut,
    permission=Permission.INGEST,
)
def complete(
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> CompleteOut:
    """Declare a study complete now instead of waiting for the stable time.

    A study already complete (or unknown) queues nothing: ``jobs`` is empty.
    """
    access = ctx.access
    service = ctx.service
    job_ids = service.complete_study(study_instance_uid)
    if job_ids:
        access.record(
            who,
            AuditAction.RECEIVE,
            object_uids=[study_instance_uid],
            details={"event": "complete", "jobs": job_ids},
        )
    return CompleteOut(study_instance_uid=study_instance_uid, jobs=job_ids)


@route(
    router,
    "POST",
    "/{study_instance_uid}/analyse-anyway",
    response_model=OverrideOut,
    permission=Permission.GIVE_FEEDBACK,
    responses={409: {"description": "The input gate refused nothing of this study"}},
)
def analyse_anyway(
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> OverrideOut:
    """Analyse a study the input gate refused ("not analysed"): audited, and the
    result is marked outside the model's intended use."""
    job_ids = request_gate_override(ctx.database, study_instance_uid)
    if not job_ids:
        raise HTTPException(
            status_code=409,
            detail=f"study {study_instance_uid} has no result the input gate refused",
        )
    ctx.access.record(
        who,
        AuditAction.GATE_OVERRIDE,
        object_uids=[study_instance_uid],
        details={"jobs": job_ids},
    )
    ctx.service.wake_workers()
    return OverrideOut(study_instance_uid=study_instance_uid, jobs=job_ids)


__all__ = ["analyse_anyway", "fhir_bundle", "merged_findings", "result_out", "study_out"]
