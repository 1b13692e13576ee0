"""FastAPI dependencies that enforce permissions on every route.

::

    access = AccessControl(database.session, SessionSigner(load_session_key(data_dir)))

    @app.get("/worklist")
    def worklist(who: Principal = Depends(access.require(Permission.VIEW_WORKLIST))): ...

Credentials are an ``Authorization: Bearer <api token>`` header or the session
cookie. No or invalid credentials give 401 (with ``WWW-Authenticate``); valid
credentials whose role lacks the permission give 403, and the denial is audited
(``access-denied``) so probing shows up in the trail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from fastapi import HTTPException, Request, status
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.security.accounts import Principal, get_user, resolve_token
from overread.security.login import LockoutPolicy, LoginOutcome, authenticate
from overread.security.roles import Permission
from overread.security.web_sessions import SESSION_COOKIE, SessionSigner

SessionFactory = Callable[[], AbstractContextManager[Session]]


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


class AccessControl:
    """Who is calling, and whether they may.

    Parameters
    ----------
    sessions
        A factory of transactional sessions (``Database.session``): each use
        commits on success.
    signer
        Signs and checks web session cookies; without one only API tokens work.
    cookie_name
        The session cookie's name.
    policy
        Failed-login throttling for :meth:`login`.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        signer: SessionSigner | None = None,
        *,
        cookie_name: str = SESSION_COOKIE,
        policy: LockoutPolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self.signer = signer
        self.cookie_name = cookie_name
        self.policy = policy or LockoutPolicy()

    def identify(self, request: Request) -> Principal | None:
        """The principal the request's credentials prove, or None.

        A bearer token, when present, is the only credential considered: a bad
        token is not rescued by a cookie.
        """
        header = request.headers.get("authorization", "")
        cookie = request.cookies.get(self.cookie_name)
        with self._sessions() as session:
            if header:
                scheme, _, value = header.partition(" ")
                if scheme.lower() != "bearer":
                    return None
                return resolve_token(session, value.strip())
            if cookie and self.signer is not None:
                return self.signer.resolve(session, cookie)
        return None

    def _deny(self, request: Request, principal: Principal, permission: Permission) -> None:
        with self._sessions() as session:
            record_event(
                session,
                actor=principal.username,
                role=principal.role.value,
                action=AuditAction.ACCESS_DENIED,
                details={
                    "permission": permission.value,
                    "method": request.method,
                    "path": request.url.path,
                    "source": _client(request),
                    "via": principal.via,
                },
            )

    def authenticated(self) -> Callable[[Request], Principal]:
        """A dependency that only requires valid credentials."""

        def dependency(request: Request) -> Principal:
            principal = self.identify(request)
            if principal is None:
                raise HTTPException(
                    status_code=status.HTTP_401_UNAUTHORIZED,
                    detail="authentication required",
                    headers={"WWW-Authenticate": 'Bearer realm="overread"'},
                )
            request.state.principal = principal
            return principal

        return dependency

    def require(self, permission: Permission) -> Callable[[Request], Principal]:
        """A dependency: 401 without valid credentials, 403 without ``permission``."""
        authenticated = self.authenticated()

        def dependency(request: Request) -> Principal:
            principal = authenticated(request)
            if not principal.can(permission):
                self._deny(request, principal, permission)
                raise HTTPException(
                    status_code=status.HTTP_403_FORBIDDEN,
                    detail=f"role {principal.role.value!r} lacks permission {permission.value!r}",
                )
            return principal

        dependency.__name__ = f"require_{permission.value}"
        return dependency

    def record(
        self,
        principal: Principal,
        action: AuditAction,
        *,
        object_uids: Iterable[str] = (),
        details: dict[str, Any] | None = None,
    ) -> None:
        """Audit something a principal did that has no transaction of its own (a view).

        Writes that do have a transaction should call
        :func:`~overread.audit.record_event` in it instead.
        """
        with self._sessions() as session:
            record_event(
                session,
                actor=principal.username,
                role=principal.role.value,
                action=action,
                object_uids=object_uids,
                details={"via": principal.via, **(details or {})},
            )

    def logout(self, principal: Principal) -> None:
        """End every web session of ``principal``'s user (the session epoch moves on)."""
        with self._sessions() as session:
            user = get_user(session, principal.username)
            if user is not None:
                user.session_epoch += 1
            record_event(
                session,
                actor=principal.username,
                role=principal.role.value,
                action=AuditAction.LOGOUT,
                details={"via": principal.via},
            )

    def login(self, username: str, password: str, source: str = "") -> tuple[LoginOutcome, str]:
        """Check a password (throttled and audited); return the outcome and a session token.

        The token is empty unless the login succeeded and a signer is configured.
        """
        with self._sessions() as session:
            outcome = authenticate(session, username, password, source=source, policy=self.policy)
            token = ""
            if outcome.ok and outcome.principal is not None and self.signer is not None:
                user = get_user(session, outcome.principal.username)
                assert user is not None
                token = self.signer.issue(user.username, user.session_epoch)
        return outcome, token


__all__ = ["AccessControl", "SessionFactory"]
