"""Signed checkpoints, compliance export, and the ``overread audit`` commands."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from overread.audit import (
    AuditAction,
    checkpoint_dir,
    export_events,
    iter_records,
    load_checkpoint_key,
    load_checkpoints,
    read_checkpoint,
    record_event,
    write_checkpoint,
)
from overread.audit.checkpoint import KEY_ENV
from overread.errors import AuditError
from overread.service.db import Database

KEY = bytes(range(32))


def _append(db: Database, n: int) -> None:
    for i in range(n):
        with db.session() as session:
            record_event(
                session, actor="bob", role="technologist", action="receive", details={"i": i}
            )


def test_checkpoint_file_is_signed_and_edits_are_refused(
    database: Database, tmp_path: Path
) -> None:
    _append(database, 3)
    written = write_checkpoint(database.engine, tmp_path, KEY)
    document = json.loads(written.path.read_text())
    assert document["head_seq"] == 3 and document["count"] == 3
    assert document["algorithm"] == "HMAC-SHA256" and len(document["signature"]) == 64
    assert read_checkpoint(written.path, KEY).head_hash == written.head_hash
    # Moving the anchor back (to hide a truncation) breaks the signature.
    document["head_seq"] = document["count"] = 2
    written.path.write_text(json.dumps(document))
    with pytest.raises(AuditError, match="signature does not match"):
        load_checkpoints(tmp_path, KEY)
    with pytest.raises(AuditError, match=r"not the configured or a retired key \(HMAC-SHA256"):
        read_checkpoint(written.path, b"another key, another fingerprint")


def test_checkpoint_key_file_is_created_once_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(AuditError, match="no checkpoint key"):
        load_checkpoint_key(tmp_path)
    key = load_checkpoint_key(tmp_path, create=True)
    assert len(key) == 32
    path = tmp_path / "audit" / "checkpoint.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_checkpoint_key(tmp_path) == key
    monkeypatch.setenv(KEY_ENV, "00" * 32)
    assert load_checkpoint_key(tmp_path) == bytes(32)


def test_export_jsonl_and_csv_for_a_range_is_audited(database: Database) -> None:
    _append(database, 4)
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    out = io.StringIO()
    with database.session() as session:
        count = export_events(session, out, start=start, end=end, fmt="jsonl", actor="carol")
    assert count == 4
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    assert lines[0]["details"] == {"i": 0} and len(lines[0]["hash"]) == 64
    with database.session() as session:
        records = list(iter_records(session))
    assert records[-1].action == AuditAction.AUDIT_EXPORT and records[-1].actor == "carol"
    assert records[-1].details["count"] == 4

    out = io.StringIO()
    with database.session() as session:
        count = export_events(session, out, start=start, end=end, fmt="csv", actor="carol")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == 5 and rows[4]["action"] == "audit-export"
    assert json.loads(rows[0]["details"]) == {"i": 0}

    out = io.StringIO()
    with database.session() as session:
        later = export_events(
            session, out, start=end, end=end + timedelta(hours=1), fmt="jsonl", actor="carol"
        )
    assert later == 0 and out.getvalue() == ""
    with pytest.raises(AuditError, match="unknown export format"), database.session() as session:
        export_events(session, out, start=start, end=end, fmt="xml", actor="carol")


def test_cli_verify_checkpoint_export(run_cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    database = Database(url)
    from overread.audit import create_tables

    create_tables(database.engine)
    _append(database, 5)

    status, out, _ = run_cli("audit", "verify", "--data-dir", data_dir, "--database-url", url)
    assert status == 0 and out.startswith("OK: 5 audit records")

    status, out, _ = run_cli("audit", "checkpoint", "--data-dir", data_dir, "--database-url", url)
    assert status == 0 and "checkpoint at record 5" in out
    assert len(list(checkpoint_dir(data_dir).glob("checkpoint-*.json"))) == 1

    export_path = tmp_path / "export.csv"
    status, out, _ = run_cli(
        "audit", "export", "--from", "2000-01-01", "--to", "2100-01-01",
        "--format", "csv", "--out", export_path, "--data-dir", data_dir, "--database-url", url,
    )  # fmt: skip
    assert status == 0 and "exported 6 audit records" in out  # 5 + the checkpoint event
    assert len(list(csv.DictReader(export_path.open()))) == 6

    status, out, _ = run_cli("audit", "verify", "--data-dir", data_dir, "--database-url", url)
    assert status == 0 and "1 signed checkpoint(s) matched" in out

    status, out, _ = run_cli("audit", "show", "--last", "3", "--database-url", url)
    lines = [line.split("\t") for line in out.splitlines()]
    assert status == 0 and [line[0] for line in lines] == ["5", "6", "7"]
    assert [line[4] for line in lines] == ["receive", "audit-checkpoint", "audit-export"]
    status, out, _ = run_cli("audit", "show", "--action", "receive", "--database-url", url)
    assert status == 0 and len(out.splitlines()) == 5
    status, _, err = run_cli("audit", "show", "--action", "teleport", "--database-url", url)
    assert status == 2 and "unknown audit action" in err

    # Deleting the checkpoint file is noticed: the chain records every checkpoint written.
    (written,) = checkpoint_dir(data_dir).glob("checkpoint-*.json")
    hidden = written.rename(tmp_path / written.name)
    status, out, _ = run_cli("audit", "verify", "--data-dir", data_dir, "--database-url", url)
    assert status == 1 and f"checkpoint {written.name} (recorded at record 6) is missing" in out
    hidden.rename(written)

    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 4"))
        conn.execute(
            text(
                "UPDATE audit_chain_head SET seq = 3, hash = (SELECT hash FROM audit_events WHERE seq = 3)"
            )
        )
    status, out, _ = run_cli("audit", "verify", "--data-dir", data_dir, "--database-url", url)
    assert status == 1
    assert out.startswith("BROKEN at record 4 (truncated)")
    status, out, _ = run_cli(
        "audit", "verify", "--json", "--data-dir", data_dir, "--database-url", url
    )
    reported = json.loads(out)
    assert status == 1 and (reported["ok"], reported["broken_seq"]) == (False, 4)
    assert reported["reason"] == "truncated"

    status, _, err = run_cli(
        "audit", "export", "--from", "yesterday", "--to", "2100-01-01", "--database-url", url
    )
    assert status == 2 and "not an ISO 8601" in err
    database.dispose()


def test_ed25519_checkpoints_verify_with_the_public_key_only(
    database: Database, tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    from overread.audit import Ed25519Signer

    _append(database, 3)
    signer = Ed25519Signer.generate()
    written = write_checkpoint(database.engine, tmp_path, signer)
    document = json.loads(written.path.read_text())
    assert document["algorithm"] == "Ed25519" and len(document["signature"]) == 128

    verifier = Ed25519Signer(signer.public_key)  # what an auditor holds: cannot sign
    assert not verifier.can_sign
    (loaded,) = load_checkpoints(tmp_path, verifier)
    assert loaded.head_hash == written.head_hash
    with pytest.raises(AuditError, match="only the public key"):
        write_checkpoint(database.engine, tmp_path, verifier)
    with pytest.raises(AuditError, match=r"not the configured or a retired key \(HMAC-SHA256"):
        load_checkpoints(tmp_path, KEY)
    with pytest.raises(
        AuditError,
        match=r"signed with Ed25519 key \w+, not the configured or a retired key \(Ed25519",
    ):
        load_checkpoints(tmp_path, Ed25519Signer.generate())

    document["head_hash"] = "0" * 64
    written.path.write_text(json.dumps(document))
    with pytest.raises(AuditError, match="signature does not match"):
        load_checkpoints(tmp_path, verifier)


def test_checkpoint_signer_is_chosen_from_the_configured_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography")
    from overread.audit import load_checkpoint_signer

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OVERREAD_AUDIT_PUBLIC_KEY", raising=False)
    with pytest.raises(AuditError, match="no checkpoint key"):
        load_checkpoint_signer(tmp_path)
    created = load_checkpoint_signer(tmp_path, create=True)
    assert created.algorithm == "Ed25519" and created.can_sign
    private = tmp_path / "audit" / "checkpoint-ed25519.key"
    assert private.stat().st_mode & 0o777 == 0o600
    assert load_checkpoint_signer(tmp_path).key_id == created.key_id
    # A verifying host gets only the public key file.
    private.unlink()
    public_only = load_checkpoint_signer(tmp_path)
    assert public_only.key_id == created.key_id and not public_only.can_sign
    monkeypatch.setenv(KEY_ENV, "ab" * 32)
    assert load_checkpoint_signer(tmp_path).algorithm == "HMAC-SHA256"


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_key_rotation_keeps_old_checkpoints_verifiable(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:  # type: ignore[no-untyped-def]
    from overread.audit import create_tables, load_checkpoint_signer, retired_keys_dir

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    if kind == "hmac":
        load_checkpoint_key(data_dir, create=True)
    else:
        pytest.importorskip("cryptography")
    url = f"sqlite:///{tmp_path / 'rotate.db'}"
    database = Database(url)
    create_tables(database.engine)
    common = ["--data-dir", data_dir, "--database-url", url]
    _append(database, 3)
    assert run_cli("audit", "checkpoint", *common)[0] == 0
    first = load_checkpoint_signer(data_dir)
    status, out, _ = run_cli("audit", "rotate-key", *common)
    assert status == 0 and f"retired {first.algorithm} key {first.key_id}" in out
    second = load_checkpoint_signer(data_dir)
    assert second.key_id != first.key_id
    _append(database, 2)
    assert run_cli("audit", "checkpoint", *common)[0] == 0
    status, out, _ = run_cli("audit", "verify", *common)
    assert status == 0 and "3 signed checkpoint(s) matched" in out
    # Without the retired key the old checkpoint cannot be checked: that is reported.
    for path in retired_keys_dir(data_dir).iterdir():
        path.unlink()
    status, out, _ = run_cli("audit", "verify", *common)
    assert status == 1 and "not the configured or a retired key" in out
    database.dispose()
