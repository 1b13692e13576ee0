"""The UI's routes: login, worklist, study, alerts, jobs and audit pages.

Every page calls the Python functions behind it (``overread.triage``, the job queue,
``overread.audit``) directly rather than the REST routes, checks its permission
through :class:`~overread.web.ui.guard.PageGuard`, and audits what it showed.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from overread.audit import (
    AuditAction,
    AuditEvent,
    checkpoint_dir,
    load_checkpoints,
    load_verification_ring,
    missing_checkpoints,
    record_event,
    verify_chain,
)
from overread.errors import OverreadError
from overread.findings import CHEXPERT_LABELS
from overread.security import Permission
from overread.service.db import JobState, utcnow
from overread.triage import (
    Alert,
    AlertState,
    ReadState,
    Verdict,
    acknowledge,
    get_item,
    query_worklist,
    record_feedback,
    set_read_state,
)
from overread.web.context import WebContext
from overread.web.ui.guard import (
    LOGIN_CSRF_COOKIE,
    LoginRequired,
    PageForbidden,
    PageGuard,
    Viewer,
    login_url,
    safe_next,
)
from overread.web.ui.images import HeatmapImages
from overread.web.ui.views import alert_rows, job_rows, study_view, worklist_rows

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
#: Seconds between the worklist page's refreshes.
REFRESH_SECONDS = 5
#: Rows per worklist page.
PAGE_SIZE = 50
#: Audit events on the audit page.
AUDIT_ROWS = 100
#: Which reading states each worklist filter shows.
STATE_FILTERS: dict[str, list[str] | None] = {
    "open": [ReadState.UNREAD.value, ReadState.IN_PROGRESS.value],
    "unread": [ReadState.UNREAD.value],
    "in-progress": [ReadState.IN_PROGRESS.value],
    "read": [ReadState.READ.value],
    "all": None,
}
#: Headers of every UI page: no framing, no inline script, no caching of patient data.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class WorklistFilter:
    """The worklist's filters, from the query string."""

    state: str = "open"
    critical: bool = False
    department: str = ""
    page: int = 1

    @classmethod
    def of(cls, request: Request) -> WorklistFilter:
        """Read (and sanitise) the filters of ``request``."""
        params = request.query_params
        state = params.get("state", "open")
        if state not in STATE_FILTERS:
            state = "open"
        try:
            page = max(1, min(int(params.get("page", "1")), 10_000))
        except ValueError:
            page = 1
        return cls(
            state=state,
            critical=params.get("critical", "") in ("1", "on", "true"),
            department=params.get("department", "").strip()[:64],
            page=page,
        )

    def query(self, **changes: Any) -> str:
        """The query string of these filters (with ``changes``)."""
        values = {
            "state": self.state,
            "critical": "1" if self.critical else "",
            "department": self.department,
            "page": str(self.page),
            **{k: str(v) for k, v in changes.items()},
        }
        return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == "1")})


class _ShownStudies:
    """Which studies each session has already been shown (for auditing refreshes).

    The worklist refreshes every few seconds; auditing each refresh would bury the
    trail, so a refresh is audited only when it shows studies that session had not
    seen. Bounded; a restart forgets, and the next refresh is audited again.
    """

    def __init__(self, sessions: int = 2048) -> None:
        self._seen: OrderedDict[str, set[str]] = OrderedDict()
        self._sessions = sessions
        self._lock = threading.Lock()

    def new(self, session_key: str, uids: list[str]) -> list[str]:
        with self._lock:
            seen = self._seen.setdefault(session_key, set())
            self._seen.move_to_end(session_key)
            fresh = [u for u in uids if u not in seen]
            seen.update(fresh)
            while len(self._seen) > self._sessions:
                self._seen.popitem(last=False)
        return fresh


class UserInterface:
    """The web UI of one gateway: its routes, templates and state."""

    def __init__(self, ctx: WebContext, guard: PageGuard) -> None:
        self.ctx = ctx
        self.guard = guard
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.images = HeatmapImages(ctx.service)
        self.shown = _ShownStudies()
        self.router = APIRouter(include_in_schema=False)
        self._routes()

    # -- rendering --------------------------------------------------------------------
    def render(
        self,
        request: Request,
        name: str,
        viewer: Viewer | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        """A page from ``templates/name`` with the common context and headers."""
        response = self.templates.TemplateResponse(
            request,
            name,
            {"viewer": viewer, "path": request.url.path, **context},
            status_code=status_code,
            headers=PAGE_HEADERS,
        )
        return response

    def error_page(
        self, request: Request, viewer: Viewer | None, status_code: int, title: str, message: str
    ) -> HTMLResponse:
        """The error page."""
        return self.render(request, "error.html", viewer, status_code, title=title, message=message)

    def _session_key(self, request: Request) -> str:
        cookie = request.cookies.get(self.ctx.access.cookie_name, "")
        return cookie[-43:] if cookie else request.headers.get("authorization", "")[-16:]

    # -- routes -----------------------------------------------------------------------
    def _routes(self) -> None:
        router = self.router
        guard = self.guard
        access = self.ctx.access
        database = self.ctx.database
        service = self.ctx.service

        worklist_page = Depends(guard.page(Permission.VIEW_WORKLIST))
        results_page = Depends(guard.page(Permission.VIEW_RESULTS))
        feedback_page = Depends(guard.page(Permission.GIVE_FEEDBACK))
        admin_page = Depends(guard.page(Permission.MANAGE_CONFIG))
        audit_page = Depends(guard.page(Permission.READ_AUDIT))

        # -- login ----------------------------------------------------------------------
        @router.get("/login")
        def login_form(request: Request, next: str = "/") -> Response:
            if access.identify(request) is not None:
                return RedirectResponse(safe_next(next), status_code=303)
            return self._login_page(request, next, "", 200)

        @router.post("/login")
        async def login(request: Request) -> Response:
            fields = await guard.form(request)
            target = safe_next(fields.get("next"))
            username = fields.get("username", "").strip()
            password = fields.get("password", "")
            source = request.client.host if request.client else ""
            if not username or not password:
                return self._login_page(request, target, "Enter your user name and password.", 400)
            outcome, token = access.login(username, password, source)
            if not outcome.ok or not token:
                if outcome.reason == "locked":
                    message = "Too many failed attempts. Try again later."
                    return self._login_page(request, target, message, 429)
                return self._login_page(request, target, "Invalid user name or password.", 401)
            response = RedirectResponse(target, status_code=303)
            assert access.signer is not None
            response.set_cookie(
                access.cookie_name,
                token,
                max_age=int(access.signer.lifetime.total_seconds()),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
            response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
            return response

        @router.post("/logout")
        async def logout(request: Request) -> Response:
            principal = access.identify(request)
            if principal is None:
                raise LoginRequired("/")
            viewer = Viewer(
                principal, guard.csrf_token(request.cookies.get(access.cookie_name, ""))
            )
            await guard.form(request, viewer)
            access.logout(principal)
            response = RedirectResponse("/login", status_code=303)
            response.delete_cookie(access.cookie_name, path="/")
            return response

        # -- worklist ---------------------------------------------------------------------
        @router.get("/")
        def worklist(request: Request, viewer: Viewer = worklist_page) -> Response:
            filters = WorklistFilter.of(request)
            rows, total = self._worklist(filters, viewer)
            uids = [r["study_instance_uid"] for r in rows]
            self.shown.new(self._session_key(request), uids)
            access.record(
                viewer.principal,
                AuditAction.VIEW,
                object_uids=uids,
                details={"page": "worklist", "filter": filters.query()},
            )
            return self.render(
                request,
                "worklist.html",
                viewer,
                rows=rows,
                total=total,
                filters=filters,
                states=list(STATE_FILTERS),
                pages=max(1, -(-total // PAGE_SIZE)),
                refresh_seconds=REFRESH_SECONDS,
            )

        @router.get("/worklist/rows")
        def worklist_rows_fragment(request: Request, viewer: Viewer = worklist_page) -> Response:
            filters = WorklistFilter.of(request)
            rows, total = self._worklist(filters, viewer)
            fresh = self.shown.new(
                self._session_key(request), [r["study_instance_uid"] for r in rows]
            )
            if fresh:
                access.record(
                    viewer.principal,
                    AuditAction.VIEW,
                    object_uids=fresh,
                    details={"page": "worklist", "refresh": True},
                )
            response = self.render(request, "_worklist_rows.html", viewer, rows=rows)
            response.headers["X-Worklist-Total"] = str(total)
            return response

        # -- study ------------------------------------------------------------------------
        @router.get("/studies/{study_instance_uid}")
        def study(
            request: Request,
            study_instance_uid: str,
            finding: str = "",
            viewer: Viewer = results_page,
        ) -> Response:
            now = utcnow()
            try:
                with database.session() as session:
                    item = get_item(session, study_instance_uid)
                    view = study_view(session, service.store, item, viewer.principal, now=now)
            except KeyError:
                return self.error_page(
                    request, viewer, 404, "Study not found", "This study is not on the worklist."
                )
            labels = [f["label"] for f in view["findings"]]
            shown = finding if finding in labels else ""
            if not shown:
                ranked = [f["label"] for f in view["findings"] if f["label"] != "No Finding"]
                overlays = self.images.stored_overlays(study_instance_uid)
                shown = next((label for label in ranked if label in overlays), "") or (
                    ranked[0] if ranked else ""
                )
            access.record(
                viewer.principal,
                AuditAction.VIEW,
                object_uids=[study_instance_uid],
                details={"page": "study"},
            )
            return self.render(
                request,
                "study.html",
                viewer,
                study=view,
                shown_finding=shown,
                image_url=f"/studies/{quote(study_instance_uid)}/image.png"
                + (f"?finding={quote(shown)}" if shown else ""),
                verdicts=[v.value for v in (Verdict.AGREE, Verdict.DISAGREE, Verdict.UNCERTAIN)],
                message=request.query_params.get("saved", ""),
            )

        @router.get("/studies/{study_instance_uid}/image.png")
        def study_image(
            request: Request,
            study_instance_uid: str,
            finding: str = "",
            viewer: Viewer = results_page,
        ) -> Response:
            if finding and finding not in CHEXPERT_LABELS:
                return Response(status_code=404, headers={"Cache-Control": "no-store"})
            try:
                image = self.images.render(study_instance_uid, finding or None)
            except KeyError:
                return Response(status_code=404, headers={"Cache-Control": "no-store"})
            return Response(
                image.png,
                media_type="image/png",
                headers={
                    "Cache-Control": "private, no-store",
                    "X-Content-Type-Options": "nosniff",
                    "X-Overread-Image-Source": image.source,
                    "X-Overread-Image-Finding": image.finding or "",
                },
            )

        @router.post("/studies/{study_instance_uid}/feedback")
        async def feedback(
            request: Request, study_instance_uid: str, viewer: Viewer = feedback_page
        ) -> Response:
            fields = await guard.form(request, viewer)
            finding = fields.get("finding", "")
            verdict = fields.get("verdict", "")
            try:
                with database.session() as session:
                    record_feedback(
                        session,
                        study_instance_uid,
                        finding,
                        verdict,
                        reader=viewer.username,
                        role=viewer.role,
                        now=utcnow(),
                    )
            except KeyError:
                return self.error_page(
                    request, viewer, 404, "Study not found", "This study is not on the worklist."
                )
            except OverreadError as exc:
                return self.error_page(request, viewer, 400, "Feedback not saved", str(exc))
            query = urlencode({"finding": finding, "saved": f"{finding}: {verdict}"})
            return RedirectResponse(
                f"/studies/{quote(study_instance_uid)}?{query}#finding-actions", status_code=303
            )

        @router.post("/studies/{study_instance_uid}/state")
        async def reading_state(
            request: Request, study_instance_uid: str, viewer: Viewer = feedback_page
        ) -> Response:
            fields = await guard.form(request, viewer)
            state = fields.get("state", "")
            try:
                with database.session() as session:
                    set_read_state(
                        session, study_instance_uid, state, reader=viewer.username, now=utcnow()
                    )
                    record_event(
                        session,
                        actor=viewer.username,
                        role=viewer.role,
                        action=AuditAction.FEEDBACK,
                        object_uids=[study_instance_uid],
                        details={"event": "read-state", "state": state, "via": "session"},
                    )
            except KeyError:
                return self.error_page(
                    request, viewer, 404, "Study not found", "This study is not on the worklist."
                )
            except OverreadError as exc:
                return self.error_page(request, viewer, 400, "State not changed", str(exc))
            target = (
                "/" if state == ReadState.READ.value else f"/studies/{quote(study_instance_uid)}"
            )
            return RedirectResponse(target, status_code=303)

        # -- alerts -----------------------------------------------------------------------
        @router.get("/alerts")
        def alerts(request: Request, viewer: Viewer = results_page) -> Response:
            now = utcnow()
            with database.session() as session:
                open_alerts = session.scalars(
                    select(Alert)
                    .where(Alert.state == AlertState.OPEN.value)
                    .order_by(Alert.score.desc(), Alert.raised_at)
                    .limit(200)
                ).all()
                done = session.scalars(
                    select(Alert)
                    .where(Alert.state == AlertState.ACKNOWLEDGED.value)
                    .order_by(Alert.acknowledged_at.desc())
                    .limit(20)
                ).all()
                open_rows = alert_rows(list(open_alerts), now=now)
                done_rows = alert_rows(list(done), now=now)
            access.record(
                viewer.principal,
                AuditAction.VIEW,
                object_uids=sorted({r.study_instance_uid for r in open_rows}),
                details={"page": "alerts"},
            )
            return self.render(
                request, "alerts.html", viewer, open_alerts=open_rows, acknowledged=done_rows
            )

        @router.post("/alerts/{alert_id}/acknowledge")
        async def acknowledge_alert(
            request: Request, alert_id: int, viewer: Viewer = feedback_page
        ) -> Response:
            await guard.form(request, viewer)
            try:
                with database.session() as session:
                    acknowledge(
                        session, alert_id, who=viewer.username, role=viewer.role, now=utcnow()
                    )
            except KeyError:
                return self.error_page(request, viewer, 404, "Alert not found", "No such alert.")
            return RedirectResponse("/alerts", status_code=303)

        # -- admin ------------------------------------------------------------------------
        @router.get("/admin/jobs")
        def jobs(request: Request, state: str = "", viewer: Viewer = admin_page) -> Response:
            known = [s.value for s in JobState]
            chosen = state if state in known else ""
            listed = job_rows(service.queue.list(state=chosen or None, limit=200))
            dead = job_rows(service.queue.list(state=JobState.DEAD_LETTERED.value, limit=200))
            counts = service.queue.counts()
            access.record(viewer.principal, AuditAction.VIEW, details={"page": "jobs"})
            return self.render(
                request,
                "jobs.html",
                viewer,
                jobs=listed,
                dead_letters=dead,
                counts=counts,
                states=known,
                chosen=chosen,
                message=request.query_params.get("requeued", ""),
            )

        @router.post("/admin/jobs/{job_id}/requeue")
        async def requeue(request: Request, job_id: int, viewer: Viewer = admin_page) -> Response:
            await guard.form(request, viewer)
            if not service.queue.requeue(job_id):
                return self.error_page(
                    request,
                    viewer,
                    409,
                    "Not requeued",
                    f"Job {job_id} is not failed or dead-lettered.",
                )
            with database.session() as session:
                record_event(
                    session,
                    actor=viewer.username,
                    role=viewer.role,
                    action=AuditAction.CONFIG_CHANGE,
                    object_uids=[str(job_id)],
                    details={"event": "job-requeued", "job_id": job_id, "via": "session"},
                )
            service.wake_workers()
            return RedirectResponse(f"/admin/jobs?requeued={job_id}", status_code=303)

        # -- audit ------------------------------------------------------------------------
        @router.get("/audit")
        def audit(request: Request, action: str = "", viewer: Viewer = audit_page) -> Response:
            actions = [a.value for a in AuditAction]
            chosen = action if action in actions else ""
            verification = self._verify()
            with database.session() as session:
                query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(AUDIT_ROWS)
                if chosen:
                    query = query.where(AuditEvent.action == chosen)
                events = [
                    {
                        "seq": e.seq,
                        "timestamp": e.timestamp,
                        "actor": e.actor,
                        "role": e.role,
                        "action": e.action,
                        "object_uids": list(e.object_uids or []),
                        "details": dict(e.details or {}),
                    }
                    for e in session.scalars(query).all()
                ]
                total = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
            access.record(
                viewer.principal, AuditAction.VIEW, details={"page": "audit", "action": chosen}
            )
            return self.render(
                request,
                "audit.html",
                viewer,
                events=events,
                total=total,
                verification=verification,
                actions=actions,
                chosen=chosen,
            )

    def _login_page(
        self, request: Request, next_path: str, error: str, status_code: int
    ) -> Response:
        token = PageGuard.new_login_token()
        response = self.render(
            request,
            "login.html",
            None,
            status_code,
            next=safe_next(next_path),
            error=error,
            login_csrf=token,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/login",
        )
        return response

    def _worklist(
        self, filters: WorklistFilter, viewer: Viewer
    ) -> tuple[list[dict[str, Any]], int]:
        now = utcnow()
        with self.ctx.database.session() as session:
            page = query_worklist(
                session,
                state=STATE_FILTERS[filters.state],
                department=filters.department or None,
                has_critical=True if filters.critical else None,
                limit=PAGE_SIZE,
                offset=(filters.page - 1) * PAGE_SIZE,
            )
            rows = worklist_rows(
                session, self.ctx.service.store, page.items, viewer.principal, now=now
            )
        return rows, page.total

    def _verify(self) -> dict[str, Any]:
        """The chain's verification against the signed checkpoints, as ``overread audit verify``."""
        root = Path(self.ctx.service.config.data_dir)
        directory = checkpoint_dir(root)
        engine = self.ctx.database.engine
        try:
            has_checkpoints = directory.is_dir() and any(directory.glob("checkpoint-*.json"))
            checkpoints = (
                load_checkpoints(directory, load_verification_ring(root)) if has_checkpoints else []
            )
        except OverreadError as exc:
            return {"ok": False, "summary": f"BROKEN: {exc}"}
        result = verify_chain(engine, checkpoints=checkpoints)
        outcome: dict[str, Any] = {"ok": result.ok, "summary": result.summary(), **result.as_dict()}
        if result.ok:
            gone = missing_checkpoints(engine, directory)
            if gone:
                seq, name = gone[0]
                outcome.update(
                    ok=False,
                    summary=f"BROKEN: checkpoint {name} (recorded at record {seq}) is missing",
                )
        return outcome


def install_handlers(app: FastAPI, ui: UserInterface) -> None:
    """Answer :class:`LoginRequired` with the login form and :class:`PageForbidden` with a 403 page."""

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        if request.headers.get("x-overread-refresh"):
            # A background refresh cannot follow a redirect usefully: tell the script.
            return Response(status_code=401, headers={"X-Overread-Login": login_url("/")})
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageForbidden)
        viewer = (
            Viewer(
                exc.principal,
                ui.guard.csrf_token(request.cookies.get(ui.ctx.access.cookie_name, "")),
            )
            if exc.principal is not None
            else None
        )
        return ui.error_page(request, viewer, 403, "Not allowed", exc.message)

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageForbidden, forbidden)


def mount_static(app: FastAPI) -> None:
    """Serve the stylesheet and script under ``/static``."""
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="overread-static")


__all__ = [
    "PAGE_HEADERS",
    "REFRESH_SECONDS",
    "STATE_FILTERS",
    "UserInterface",
    "WorklistFilter",
    "install_handlers",
    "mount_static",
]
