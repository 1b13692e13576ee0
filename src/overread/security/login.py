"""Password login with failed-login throttling, every attempt audited.

Failures count against two keys with separate budgets: the account
(``user:NAME``, 5 failures) and the client address (``source:ADDR``, 50). Past
its budget each further failure locks a key for exponentially longer (1 s, 2 s,
4 s, ... up to a cap), so online guessing of one account, and spraying many
accounts from one address, both slow to a crawl, while a user who mistypes twice
is not locked out.

* A locked account is refused from every address.
* A locked address is refused for accounts that have failures of their own (in
  the current window). An account with no failures of its own is still let
  through, so an attacker behind the same NAT or proxy cannot lock the other
  users of that address out of their accounts; each account they try then has a
  failure of its own and is refused from there too.
* Past a much higher ceiling (500 failures from the address), every account from
  that address waits a short fixed pause (5 s) after the address's latest failure:
  it caps the password checks one address can cause (one per pause) without
  shutting the other users of the address out for longer than a retry.

While refused the password is not even checked: a guess during lockout teaches
the attacker nothing. Unknown user names are throttled and timed exactly like
known ones, so lockouts and timing do not reveal which names exist.

The outcome, the throttle counters and the ``login-success``/``login-failure``
audit event are written in the caller's session: commit it whatever the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.security.accounts import Principal, get_user
from overread.security.passwords import dummy_hash, hash_password, needs_rehash, verify_password
from overread.security.roles import Role
from overread.security.schema import LoginThrottle, utcnow


@dataclass(frozen=True)
class LockoutPolicy:
    """How failed logins are throttled.

    Parameters
    ----------
    user_threshold
        Failures of one user name (from any address) before it is locked.
    source_threshold
        Failures from one address (any user names) before it is locked for the
        accounts that have failures of their own.
    source_ceiling
        Failures from one address after which every account from it waits
        ``ceiling_pause_seconds`` after the address's latest failure.
    base_seconds
        The first lockout; each further failure doubles it.
    max_seconds
        The longest lockout.
    reset_after
        A key with no failure for this long starts counting again from zero.
    ceiling_pause_seconds
        The fixed pause past the ceiling (never doubled, so one attacker cannot keep
        a shared address locked for everyone).
    """

    user_threshold: int = 5
    source_threshold: int = 50
    source_ceiling: int = 500
    base_seconds: float = 1.0
    max_seconds: float = 900.0
    reset_after: timedelta = timedelta(hours=1)
    ceiling_pause_seconds: float = 5.0

    def lockout(self, failures: int, threshold: int) -> timedelta | None:
        """The lockout after the ``failures``-th failure, or None below the threshold."""
        if failures < threshold:
            return None
        exponent = min(failures - threshold, 30)
        return timedelta(seconds=min(self.base_seconds * 2**exponent, self.max_seconds))


@dataclass(frozen=True)
class LoginOutcome:
    """The result of :func:`authenticate`.

    ``reason`` is ``"ok"``, ``"bad-credentials"`` (unknown user or wrong password:
    deliberately not told apart), ``"disabled"`` or ``"locked"``; ``retry_after``
    is set while locked.
    """

    ok: bool
    reason: str
    principal: Principal | None = None
    retry_after: float | None = None


def _lock_throttle(session: Session, key: str) -> int:
    result = session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key == key)
        .values(failures=LoginThrottle.failures)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 1))


def _throttle(session: Session, key: str) -> LoginThrottle:
    """The throttle row of ``key``, locked until the caller's transaction ends.

    Lock first, read second (as the audit chain does): the no-op UPDATE takes
    PostgreSQL's row lock or SQLite's write lock, so parallel guesses at one account
    queue here and each sees the lockout the previous one caused. Without this a
    burst of parallel attempts would all read "not locked" and be counted once.
    """
    if _lock_throttle(session, key) == 0:
        try:
            with session.begin_nested():
                session.add(LoginThrottle(key=key, failures=0))
        except IntegrityError:  # created concurrently: lock that one
            _lock_throttle(session, key)
    row = session.scalar(
        select(LoginThrottle)
        .where(LoginThrottle.key == key)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return row


def _failures(throttle: LoginThrottle, policy: LockoutPolicy, now: datetime) -> int:
    """The key's failures in the current window (0 once it has been quiet long enough)."""
    if throttle.last_failure_at is not None and now - throttle.last_failure_at > policy.reset_after:
        return 0
    return throttle.failures


def _ceiling_pause_until(
    throttle: LoginThrottle, policy: LockoutPolicy, now: datetime
) -> datetime | None:
    """When the pause after an address's latest failure ends, once it is past the ceiling."""
    if throttle.last_failure_at is None or _failures(throttle, policy, now) < policy.source_ceiling:
        return None
    return throttle.last_failure_at + timedelta(seconds=policy.ceiling_pause_seconds)


def _fail(throttle: LoginThrottle, threshold: int, policy: LockoutPolicy, now: datetime) -> None:
    throttle.failures = _failures(throttle, policy, now) + 1
    throttle.last_failure_at = now
    lockout = policy.lockout(throttle.failures, threshold)
    throttle.locked_until = now + lockout if lockout is not None else None


def authenticate(
    session: Session,
    username: str,
    password: str,
    *,
    source: str = "",
    policy: LockoutPolicy | None = None,
    now: datetime | None = None,
) -> LoginOutcome:
    """Check a user name and password, with throttling; audit the attempt.

    Parameters
    ----------
    session
        The caller's session; commit it after the call, whatever the outcome.
    username, password
        What was typed.
    source
        The client's address (for per-source throttling and the audit record).
    policy
        Throttling policy (default :class:`LockoutPolicy`).
    now
        The current time (tests pass a clock).
    """
    policy = policy or LockoutPolicy()
    now = now or utcnow()
    name = username[:64]
    user_key = _throttle(session, f"user:{name}")
    # Without a source address (a local tool) only the user name is throttled.
    source_key = _throttle(session, f"source:{source[:255]}") if source else None
    details: dict[str, object] = {"source": source}

    def failure(reason: str, retry_after: float | None = None) -> LoginOutcome:
        record_event(
            session,
            actor=name,
            action=AuditAction.LOGIN_FAILURE,
            details={**details, "reason": reason, "retry_after": retry_after},
        )
        return LoginOutcome(ok=False, reason=reason, retry_after=retry_after)

    locks = [user_key.locked_until]
    if source_key is not None:
        # The address's budget binds accounts with failures of their own; past its
        # ceiling everyone waits a short fixed pause (see the module docstring).
        own_failures = _failures(user_key, policy, now) > 0
        locks.append(source_key.locked_until if own_failures else None)
        locks.append(_ceiling_pause_until(source_key, policy, now))
    active = [lock for lock in locks if lock is not None and lock > now]
    if active:
        return failure("locked", (max(active) - now).total_seconds())

    user = get_user(session, name)
    matched = verify_password(user.password_hash if user else dummy_hash(), password)
    if user is None or not matched:
        _fail(user_key, policy.user_threshold, policy, now)
        if source_key is not None:
            _fail(source_key, policy.source_threshold, policy, now)
        return failure("bad-credentials")
    if not user.active:
        return failure("disabled")

    user_key.failures = 0
    user_key.locked_until = None
    user.last_login_at = now
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    role = Role(user.role)
    record_event(
        session, actor=user.username, role=role.value, action=AuditAction.LOGIN_SUCCESS,
        details=details,
    )  # fmt: skip
    return LoginOutcome(
        ok=True, reason="ok", principal=Principal(username=user.username, role=role, via="password")
    )


__all__ = ["LockoutPolicy", "LoginOutcome", "authenticate"]
