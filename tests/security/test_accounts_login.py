"""Users, passwords, tokens, login throttling and web sessions, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from pydantic import BaseModel, Field
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent, iter_records, verify_chain
from overread.security import (
    AccountError,
    ApiToken,
    LockoutPolicy,
    Permission,
    Role,
    SessionSigner,
    add_user,
    authenticate,
    get_user,
    has_permission,
    hash_password,
    issue_token,
    parse_role,
    redact_phi,
    resolve_token,
    revoke_token,
    set_active,
    set_password,
    verify_password,
)
from overread.security.schema import utcnow
from overread.service.db import Database

PASSWORD = "correct horse battery"


def _actions(db: Database) -> list[str]:
    with db.session() as session:
        return [r.action for r in iter_records(session)]


def test_role_permission_table() -> None:
    assert has_permission(Role.RADIOLOGIST, Permission.VIEW_PHI)
    assert not has_permission(Role.ADMIN, Permission.VIEW_PHI)
    assert has_permission(Role.ADMIN, Permission.MANAGE_USERS)
    assert has_permission("auditor", Permission.READ_AUDIT)
    assert not has_permission("auditor", Permission.GIVE_FEEDBACK)
    assert not has_permission("nobody", Permission.VIEW_WORKLIST)
    assert parse_role(" Service ") is Role.SERVICE
    with pytest.raises(ValueError, match="unknown role"):
        parse_role("superuser")


def test_passwords_are_argon2id_and_salted() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("$argon2id$") and first != second
    assert verify_password(first, PASSWORD)
    assert not verify_password(first, PASSWORD + "!")
    assert not verify_password("", PASSWORD)
    assert not verify_password("not a hash", PASSWORD)
    with pytest.raises(ValueError, match="too short"):
        hash_password("short")


def test_add_user_is_audited_and_validated(database: Database) -> None:
    with database.session() as session:
        add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
        user = get_user(session, "alice")
        assert user is not None and user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
    with pytest.raises(AccountError, match="already exists"), database.session() as session:
        add_user(session, "alice", "admin", actor="os:root")
    with pytest.raises(AccountError, match="invalid user name"), database.session() as session:
        add_user(session, "bad name;", "admin", actor="os:root")
    with pytest.raises(AccountError, match="unknown role"), database.session() as session:
        add_user(session, "bob", "god", actor="os:root")
    with database.session() as session:
        records = list(iter_records(session))
    assert [r.action for r in records] == [AuditAction.USER_CHANGE]
    assert records[0].details["user"] == "alice" and records[0].actor == "os:root"


def test_tokens_are_hashed_expire_and_revoke(database: Database) -> None:
    with database.session() as session:
        add_user(session, "pacs", Role.SERVICE, actor="os:root")
        token, row = issue_token(session, "pacs", expires_in=timedelta(days=1), actor="os:root")
        token_id = row.id
    with database.session() as session:
        stored = session.scalars(select(ApiToken.token_sha256)).all()
        assert token not in stored and len(stored[0]) == 64
        principal = resolve_token(session, token)
        assert principal is not None and principal.role is Role.SERVICE
        assert principal.via == "token" and principal.can(Permission.INGEST)
        assert resolve_token(session, token + "x") is None
        assert resolve_token(session, "garbage") is None
        assert resolve_token(session, token, now=utcnow() + timedelta(days=2)) is None
        with pytest.raises(AccountError, match="only carry the role"):
            issue_token(session, "pacs", role=Role.ADMIN, actor="os:root")
    with database.session() as session:
        revoke_token(session, token_id, actor="os:root")
    with database.session() as session:
        assert resolve_token(session, token) is None
    with database.session() as session:
        token2, _ = issue_token(session, "pacs", actor="os:root")
        set_active(session, "pacs", False, actor="os:root")
    with database.session() as session:
        assert resolve_token(session, token2) is None
    assert AuditAction.TOKEN_ISSUED in _actions(database)


def test_login_success_and_failure_are_audited(database: Database) -> None:
    with database.session() as session:
        add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
    with database.session() as session:
        ok = authenticate(session, "alice", PASSWORD, source="10.0.0.5")
    with database.session() as session:
        wrong = authenticate(session, "alice", "guess-guess", source="10.0.0.6")
    with database.session() as session:
        unknown = authenticate(session, "mallory", "guess-guess", source="10.0.0.6")
    assert ok.ok and ok.principal is not None and ok.principal.role is Role.RADIOLOGIST
    assert (wrong.ok, wrong.reason) == (False, "bad-credentials")
    assert (unknown.ok, unknown.reason) == (False, "bad-credentials")
    with database.session() as session:
        records = list(iter_records(session))
        assert get_user(session, "alice").last_login_at is not None  # type: ignore[union-attr]
    logins = [(r.action, r.actor, r.details.get("source")) for r in records[1:]]
    assert logins == [
        ("login-success", "alice", "10.0.0.5"),
        ("login-failure", "alice", "10.0.0.6"),
        ("login-failure", "mallory", "10.0.0.6"),
    ]
    assert verify_chain(database.engine).ok


def test_per_user_lockout_is_exponential(database: Database) -> None:
    policy = LockoutPolicy(user_threshold=3, source_threshold=100, base_seconds=10)
    with database.session() as session:
        add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
    start = utcnow()

    def attempt(password: str, at_seconds: float, source: str = "10.0.0.9"):  # type: ignore[no-untyped-def]
        with database.session() as session:
            return authenticate(
                session, "alice", password, source=source, policy=policy,
                now=start + timedelta(seconds=at_seconds),
            )  # fmt: skip

    assert attempt("wrong-one", 0).reason == "bad-credentials"
    assert attempt("wrong-two", 1).reason == "bad-credentials"
    assert attempt("wrong-three", 2).reason == "bad-credentials"  # 3rd failure: locked 10 s
    locked = attempt(PASSWORD, 3)  # right password, but locked: not even checked
    assert (locked.ok, locked.reason) == (False, "locked")
    assert locked.retry_after == pytest.approx(9.0)
    assert attempt(PASSWORD, 4, source="10.9.9.9").reason == "locked"  # per user, any source
    assert attempt("wrong-four", 13).reason == "bad-credentials"  # 4th failure: locked 20 s
    assert attempt(PASSWORD, 14).retry_after == pytest.approx(19.0)
    assert attempt("wrong-five", 34).reason == "bad-credentials"  # 5th failure: locked 40 s
    assert attempt(PASSWORD, 35).retry_after == pytest.approx(39.0)
    assert attempt(PASSWORD, 75).ok  # lock expired; success resets the user's count
    assert attempt("wrong-six", 76).reason == "bad-credentials"
    assert attempt(PASSWORD, 77).ok


def test_per_source_lockout_covers_many_user_names(database: Database) -> None:
    """Spraying locks the address for the names it tried, not for other accounts."""
    policy = LockoutPolicy(user_threshold=100, source_threshold=4, base_seconds=60)
    with database.session() as session:
        add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
        add_user(session, "bob", "radiologist", password=PASSWORD, actor="os:root")
    now = utcnow()

    def attempt(name: str, password: str, source: str = "203.0.113.7"):  # type: ignore[no-untyped-def]
        with database.session() as session:
            return authenticate(session, name, password, source=source, policy=policy, now=now)

    for n in range(4):  # password spraying from one address
        assert attempt(f"user{n}", "Winter2026!").reason == "bad-credentials"
    # The address is locked for every name with failures of its own, whatever the password,
    assert attempt("user0", "Winter2026!").reason == "locked"
    assert attempt("user0", "Winter2026!", source="198.51.100.1").reason == "bad-credentials"
    # but not for a user of that address whose account has no failure: bob logs in.
    assert attempt("bob", PASSWORD).ok
    assert attempt("alice", PASSWORD, source="198.51.100.1").ok  # and alice from elsewhere


def test_past_the_address_ceiling_everyone_waits_a_short_fixed_pause(database: Database) -> None:
    policy = LockoutPolicy(
        user_threshold=100,
        source_threshold=2,
        source_ceiling=4,
        base_seconds=60,
        ceiling_pause_seconds=5,
    )
    with database.session() as session:
        add_user(session, "bob", "radiologist", password=PASSWORD, actor="os:root")
    now = utcnow()

    def attempt(name: str, password: str, at: float = 0.0, source: str = "203.0.113.7"):  # type: ignore[no-untyped-def]
        with database.session() as session:
            return authenticate(
                session, name, password, source=source, policy=policy,
                now=now + timedelta(seconds=at),
            )  # fmt: skip

    for n in range(4):  # fresh names pass the soft lock, one guess each, up to the ceiling
        assert attempt(f"user{n}", "Winter2026!").reason == "bad-credentials"
    blocked = attempt("bob", PASSWORD)
    assert (blocked.ok, blocked.reason) == (False, "locked")
    # The pause is fixed: the address's failures doubled nothing (60 s would be the
    # budget's lockout), so bob retrying a few seconds later gets in.
    assert blocked.retry_after == pytest.approx(5.0)
    assert attempt("bob", PASSWORD, source="198.51.100.1").ok
    # More failures past the ceiling still give only the fixed pause after each one.
    for n in range(4, 10):
        assert attempt(f"user{n}", "Winter2026!", at=6.0 * (n - 3)).reason == "bad-credentials"
    again = attempt("bob", PASSWORD, at=36.0)
    assert (again.reason, again.retry_after) == ("locked", pytest.approx(5.0))
    assert attempt("bob", PASSWORD, at=41.5).ok


def test_disabled_user_cannot_log_in(database: Database) -> None:
    with database.session() as session:
        add_user(session, "carol", "technologist", password=PASSWORD, actor="os:root")
        set_active(session, "carol", False, actor="os:root")
    with database.session() as session:
        outcome = authenticate(session, "carol", PASSWORD, source="10.0.0.1")
    assert (outcome.ok, outcome.reason) == (False, "disabled")


def test_session_tokens_are_signed_expire_and_end_on_password_change(
    database: Database,
) -> None:
    signer = SessionSigner(b"s" * 32, lifetime=timedelta(hours=1))
    with database.session() as session:
        user = add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
        token = signer.issue("alice", user.session_epoch)
    with database.session() as session:
        principal = signer.resolve(session, token)
        assert principal is not None and principal.role is Role.RADIOLOGIST
        assert principal.via == "session"
        payload, mac = token.split(".")
        assert signer.resolve(session, payload + "." + mac[::-1]) is None
        assert SessionSigner(b"t" * 32).resolve(session, token) is None
        assert signer.read(token, now=utcnow() + timedelta(hours=2)) is None
        assert signer.read("no-dot") is None
    with database.session() as session:
        set_password(session, "alice", "a new password", actor="alice")
    with database.session() as session:
        assert signer.resolve(session, token) is None


class Finding(BaseModel):
    label: str
    probability: float


class Study(BaseModel):
    study_instance_uid: str
    patient_name: str
    patient_id: str
    accession_number: str
    site_note: str = Field(default="", json_schema_extra={"phi": True})
    findings: list[Finding]
    priors: list[Study] = Field(default_factory=list)


def test_phi_is_removed_for_roles_without_view_phi() -> None:
    prior = Study(
        study_instance_uid="1.2.3.0", patient_name="DOE^JANE", patient_id="P1",
        accession_number="A0", findings=[],
    )  # fmt: skip
    study = Study(
        study_instance_uid="1.2.3.4", patient_name="DOE^JANE", patient_id="P1",
        accession_number="A1", site_note="bed 4", priors=[prior],
        findings=[Finding(label="Effusion", probability=0.9)],
    )  # fmt: skip
    full = redact_phi(study, Role.RADIOLOGIST)
    assert full["patient_name"] == "DOE^JANE" and full["site_note"] == "bed 4"
    stripped = redact_phi(study, Role.ADMIN)
    assert set(stripped) == {"study_instance_uid", "findings", "priors"}
    assert stripped["findings"] == [{"label": "Effusion", "probability": 0.9}]
    assert set(stripped["priors"][0]) == {"study_instance_uid", "findings", "priors"}
    assert "DOE" not in str(stripped)


def test_login_throttle_and_audit_share_the_callers_transaction(database: Database) -> None:
    with database.session() as session:
        add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
    with pytest.raises(RuntimeError), database.session() as session:
        authenticate(session, "alice", "wrong-password", source="10.0.0.1")
        raise RuntimeError("request aborted")
    with database.session() as session:
        count = len(session.scalars(select(AuditEvent.seq)).all())
    assert count == 1  # only the user-change; the aborted login left nothing


def test_parallel_guesses_are_each_counted(database: Database) -> None:
    """A burst of parallel wrong guesses cannot slip past the lockout together."""
    policy = LockoutPolicy(user_threshold=3, source_threshold=100, base_seconds=600)
    with database.session() as session:
        add_user(session, "alice", "radiologist", password=PASSWORD, actor="os:root")
    attempts = 8
    barrier = threading.Barrier(attempts)
    reasons: list[str] = []
    errors: list[BaseException] = []

    def guess(n: int) -> None:
        try:
            barrier.wait()
            with database.session() as session:
                outcome = authenticate(
                    session, "alice", f"guess-{n:04d}", source=f"10.1.0.{n}", policy=policy
                )
            reasons.append(outcome.reason)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(reasons) == ["bad-credentials"] * 3 + ["locked"] * 5
    assert verify_chain(database.engine).ok
