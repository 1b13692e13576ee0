"""DICOMweb STOW-RS (``POST /dicom-web/studies[/{uid}]``), for callers holding ``ingest``."""

from __future__ import annotations

import contextlib
import logging
import mmap
import pathlib
import tempfile
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from overread.audit import AuditAction
from overread.security import Permission, Principal
from overread.service.stow import (
    STATUS_OUT_OF_RESOURCES,
    Body,
    StowRequestError,
    StowResult,
    boundary_of,
    store_instances,
)
from overread.web.api.guards import caller, context, route
from overread.web.api.schemas import UID_PATTERN
from overread.web.context import WebContext

_STOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}
_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance stored (DICOM JSON)"},
    202: {"description": "Some instances stored, some refused (DICOM JSON)"},
    400: {"description": "A multipart/related body that cannot be parsed (no boundary, no part)"},
    409: {"description": "No instance stored (DICOM JSON, Failed SOP Sequence)"},
    415: {"description": "Not a multipart/related DICOM body"},
    507: {"description": "The gateway's disk is under its refuse watermark: nothing is read"},
}


logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])


class _Spool(contextlib.AbstractContextManager[Body]):
    """A request body written to a temporary file and memory-mapped (then removed)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.view: mmap.mmap | None = None

    def __enter__(self) -> Body:
        try:
            self.handle.flush()
            size = self.handle.tell()
            if size == 0:
                return b""
            self.view = mmap.mmap(self.handle.fileno(), size, access=mmap.ACCESS_READ)
        except BaseException:
            self.handle.close()
            raise
        return self.view

    def __exit__(self, *_exc: object) -> None:
        if self.view is not None:
            self.view.close()
        self.handle.close()


async def _spooled(request: Request, directory: pathlib.Path) -> _Spool:
    """Stream the body to disk (the size limit applies as it arrives), not into memory.

    A STOW-RS body can be hundreds of megabytes; parts are then copied out of the
    memory map one at a time, so the gateway holds one instance, not the request.
    """
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.TemporaryFile(dir=directory, prefix="stow-")  # noqa: SIM115 (closed by _Spool)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(handle.write, chunk)  # disk waits stall no other request
        await run_in_threadpool(handle.flush)
    except BaseException:
        handle.close()
        raise
    return _Spool(handle)


async def _drain(request: Request) -> None:
    """Read what is left of a body (the size limit still applies) so the client hears the answer."""
    with contextlib.suppress(Exception):
        async for _chunk in request.stream():
            pass


async def _audit(ctx: WebContext, who: Principal, action: AuditAction, **event: Any) -> None:
    """Audit the request as a whole; a database that cannot take it does not change the answer.

    The instances' own ``receive`` events are written with them, and each refused
    part is audited on its own, so the answer to the sender (what was stored) stays
    true when only this summary event is lost (a full disk, the database down).
    """
    try:
        await run_in_threadpool(ctx.access.record, who, action, **event)
    except Exception as exc:
        logger.error("STOW-RS %s by %s could not be audited: %s", action, who.username, exc)


async def _stow(
    request: Request, ctx: WebContext, who: Principal, study: str | None
) -> JSONResponse:
    service = ctx.service
    client = request.client.host if request.client else ""
    disk = service.ingestor.disk
    refusal = None if disk is None else await run_in_threadpool(disk.refusal)
    if refusal is not None:  # refused before the body is spooled to that disk
        await run_in_threadpool(
            ctx.access.record,
            who,
            AuditAction.RECEIVE_REFUSED,
            details={"via_http": "stow-rs", "source": client, "status": 507, "reason": refusal},
        )
        raise HTTPException(status_code=507, detail=refusal)
    try:
        boundary_of(request.headers.get("content-type", ""))  # 415/400 before reading
        try:
            spool = await _spooled(request, pathlib.Path(service.config.data_dir) / "tmp")
        except OSError as exc:  # a full or failing disk: refused as out of resources, not a 500
            logger.error("STOW-RS from %s: cannot spool the request body: %s", client, exc)
            await _drain(request)
            result = StowResult(failed=[("", "", STATUS_OUT_OF_RESOURCES)])
            await _audit(
                ctx,
                who,
                AuditAction.RECEIVE_REFUSED,
                details={
                    "via_http": "stow-rs",
                    "source": client,
                    "status": result.http_status,
                    "reason": "cannot spool the request body (out of resources)",
                },
            )
            return JSONResponse(
                result.to_dicom_json(),
                status_code=result.http_status,
                media_type="application/dicom+json",
            )
        with spool as body:
            result = await run_in_threadpool(
                store_instances,
                service.ingestor,
                request.headers.get("content-type", ""),
                body,
                client=client,
                study_instance_uid=study,
            )
    except StowRequestError as exc:
        await _audit(
            ctx,
            who,
            AuditAction.RECEIVE_REFUSED,
            details={
                "via_http": "stow-rs",
                "source": client,
                "status": exc.status,
                "reason": str(exc),
            },
        )
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    # The request as a whole is audited as what happened: a receive when anything
    # was stored, a refusal when nothing was (each refused part has its own event).
    await _audit(
        ctx,
        who,
        AuditAction.RECEIVE if result.stored else AuditAction.RECEIVE_REFUSED,
        object_uids=sorted(result.studies),
        details={
            "via_http": "stow-rs",
            "source": client,
            "status": result.http_status,
            "stored": len(result.stored),
            "refused": len(result.failed),
        },
    )
    if result.studies:
        try:
            await run_in_threadpool(service.request_released, result.studies)
        except Exception as exc:  # the stable-age rule completes the studies instead
            logger.error("STOW-RS studies %s not released at once: %s", result.studies, exc)
    return JSONResponse(
        result.to_dicom_json(),
        status_code=result.http_status,
        media_type="application/dicom+json",
    )


@route(
    router,
    "POST",
    "/studies",
    permission=Permission.INGEST,
    responses=_STOW_RESPONSES,
    openapi_extra=_STOW_BODY,
)
async def stow(
    request: Request, ctx: WebContext = Depends(context), who: Principal = Depends(caller)
) -> JSONResponse:
    """STOW-RS: store instances (multipart/related; type=application/dicom)."""
    return await _stow(request, ctx, who, None)


@route(
    router,
    "POST",
    "/studies/{study_instance_uid}",
    permission=Permission.INGEST,
    responses=_STOW_RESPONSES,
    openapi_extra=_STOW_BODY,
)
async def stow_study(
    request: Request,
    study_instance_uid: str = Path(pattern=UID_PATTERN),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """STOW-RS into one study: parts of another study are refused (0xA900)."""
    return await _stow(request, ctx, who, study_instance_uid)


__all__ = ["router"]
