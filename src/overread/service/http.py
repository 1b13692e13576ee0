"""The gateway's HTTP API: health, jobs, the explicit study trigger, and STOW-RS.

This API is unauthenticated until the access-control work lands; bind it to
loopback (the default ``127.0.0.1``) or put it behind an authenticating proxy.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from overread import __version__
from overread.errors import ServiceError
from overread.service.db import Result, Study
from overread.service.jobs import job_to_dict
from overread.service.stow import StowRequestError, store_instances

if TYPE_CHECKING:
    from overread.service.server import Service

logger = logging.getLogger(__name__)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application serving ``service``."""
    app = FastAPI(title="overread gateway", version=__version__)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness plus the job counts; 503 when the database cannot be reached."""
        try:
            counts = service.queue.counts()
        except Exception as exc:
            raise HTTPException(status_code=503, detail=f"database unavailable: {exc}") from None
        return {
            "status": "ok",
            "version": __version__,
            "ae_title": service.config.ae_title,
            "dicom_port": service.dicom_port,
            "jobs": counts,
        }

    @app.get("/api/jobs")
    def list_jobs(
        state: str | None = None,
        study: str | None = Query(default=None, description="Study Instance UID"),
        limit: int = Query(default=200, ge=1, le=5000),
    ) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally filtered by state or study."""
        return [
            job_to_dict(j)
            for j in service.queue.list(state=state, study_instance_uid=study, limit=limit)
        ]

    @app.post("/api/jobs/{job_id}/requeue")
    def requeue(job_id: int) -> dict[str, Any]:
        """Put a dead-lettered (or failed) job back in the queue."""
        if not service.queue.requeue(job_id):
            raise HTTPException(status_code=409, detail="job is not failed or dead-lettered")
        service.wake_workers()
        return {"id": job_id, "state": "queued"}

    @app.get("/api/studies")
    def list_studies(
        state: str | None = None, limit: int = Query(default=200, ge=1, le=5000)
    ) -> list[dict[str, Any]]:
        """Studies, most recently received first."""
        query = select(Study).order_by(Study.last_instance_at.desc()).limit(limit)
        if state:
            query = query.where(Study.state == state)
        with service.database.session() as session:
            return [_study_to_dict(s) for s in session.scalars(query).all()]

    @app.get("/api/studies/{study_instance_uid}/results")
    def study_results(study_instance_uid: str) -> list[dict[str, Any]]:
        """The model results stored for a study (404 for an unknown study)."""
        with service.database.session() as session:
            if (
                session.scalar(select(Study.id).filter_by(study_instance_uid=study_instance_uid))
                is None
            ):
                raise HTTPException(status_code=404, detail="unknown study")
            rows = session.scalars(
                select(Result).filter_by(study_instance_uid=study_instance_uid).order_by(Result.id)
            ).all()
            return [
                {
                    "id": r.id,
                    "job_id": r.job_id,
                    "model_name": r.model_name,
                    "model_version": r.model_version,
                    "summary": r.summary,
                    "artifacts": r.artifacts,
                    "created_at": r.created_at.isoformat(),
                }
                for r in rows
            ]

    @app.post("/api/studies/{study_instance_uid}/complete")
    def complete(study_instance_uid: str) -> dict[str, Any]:
        """Declare a study complete now instead of waiting for the stable time."""
        job_ids = service.complete_study(study_instance_uid)
        return {"study_instance_uid": study_instance_uid, "jobs": job_ids}

    async def _stow(request: Request, study_instance_uid: str | None) -> JSONResponse:
        body = await request.body()
        client = request.client.host if request.client else ""
        try:
            result = await run_in_threadpool(
                store_instances,
                service.ingestor,
                request.headers.get("content-type", ""),
                body,
                client=client,
                study_instance_uid=study_instance_uid,
            )
        except StowRequestError as exc:
            raise HTTPException(status_code=415, detail=str(exc)) from None
        if result.studies:
            await run_in_threadpool(service.request_released, result.studies)
        return JSONResponse(
            result.to_dicom_json(),
            status_code=result.http_status,
            media_type="application/dicom+json",
        )

    @app.post("/dicom-web/studies")
    async def stow(request: Request) -> JSONResponse:
        """STOW-RS: store instances (multipart/related; type=application/dicom)."""
        return await _stow(request, None)

    @app.post("/dicom-web/studies/{study_instance_uid}")
    async def stow_study(study_instance_uid: str, request: Request) -> JSONResponse:
        """STOW-RS into one study: parts of another study are refused (0xA900)."""
        return await _stow(request, study_instance_uid)

    return app


def _study_to_dict(study: Study) -> dict[str, Any]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "state": study.state,
        "instance_count": study.instance_count,
        "first_instance_at": study.first_instance_at.isoformat(),
        "last_instance_at": study.last_instance_at.isoformat(),
        "completed_at": study.completed_at.isoformat() if study.completed_at else None,
        "complete_reason": study.complete_reason,
    }


class HttpServer:
    """uvicorn running the API in a background thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="overread-http", daemon=True)

    def start(self, timeout: float = 10.0) -> int:
        """Start serving and return the bound port."""
        self.thread.start()
        for _ in range(int(timeout / 0.05)):
            if self.server.started:
                break
            if not self.thread.is_alive():
                raise ServiceError("the HTTP server failed to start (is the port in use?)")
            threading.Event().wait(0.05)
        else:
            raise ServiceError("the HTTP server did not start in time")
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.server.config.port

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(10)


__all__ = ["HttpServer", "create_app"]
