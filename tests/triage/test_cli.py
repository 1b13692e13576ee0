"""``overread worklist``: list, alerts, sweep, ack, export-feedback."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from overread.audit import create_tables as create_audit_tables
from overread.service.db import Database
from overread.triage import (
    StudyContext,
    raise_alerts,
    record_feedback,
    triage_config,
    upsert_study,
)

from .conftest import F, WebhookReceiver

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: WebhookReceiver) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    database = Database(url)
    create_audit_tables(database.engine)
    config_file = tmp_path / "triage.toml"
    config_file.write_text(
        f'[[triage.alerts.channels]]\nname = "hook"\nkind = "webhook"\nurl = "{webhook.url}"\n',
        encoding="utf-8",
    )
    config = triage_config(
        {"alerts": {"channels": [{"name": "hook", "kind": "webhook", "url": webhook.url}]}}
    )
    now = datetime.now(UTC)
    with database.session() as session:
        item = upsert_study(
            session, "1.1", [F("Pneumothorax", 0.9, True)], StudyContext("ED", 70), config, now=now
        )
        raise_alerts(session, item, config, now=now)
        upsert_study(
            session,
            "1.2",
            [F("Cardiomegaly", 0.7, True)],
            StudyContext("ICU"),
            config,
            now=now,
            sop_instance_uid="1.2.1",
        )
        record_feedback(session, "1.2", "Cardiomegaly", "agree", reader="dr.a", now=now)
    database.dispose()
    return url


def test_list_shows_order_and_reasons(run_cli: RunCli, filled: str) -> None:
    status, out, _ = run_cli("worklist", "list", "--database-url", filled)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "2 studies; showing 1-2"
    assert "1.1 CRITICAL Pneumothorax" in lines[1] and "finding:Pneumothorax +90.0" in lines[1]
    assert "1.2" in lines[2] and "department +15.0" in lines[2]
    status, out, _ = run_cli(
        "worklist", "list", "--database-url", filled, "--no-critical", "--json"
    )
    data = json.loads(out)
    assert data["total"] == 1 and data["items"][0]["study_instance_uid"] == "1.2"


def test_sweep_ack_and_alerts(
    run_cli: RunCli, filled: str, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    config = tmp_path / "triage.toml"
    status, out, _ = run_cli(
        "worklist", "sweep", "--database-url", filled, "--triage-config", config
    )
    assert status == 0 and "sent 1" in out
    assert webhook.received[0]["finding"] == "Pneumothorax"
    status, out, _ = run_cli("worklist", "alerts", "--open", "--database-url", filled)
    assert status == 0 and "Pneumothorax p=0.90 level 0 open" in out
    status, _, err = run_cli("worklist", "ack", "1", "--who", "dr.b", "--database-url", filled)
    assert status == 2 and "--told" in err
    status, _, err = run_cli(
        "worklist", "ack", "1", "--who", "dr.b", "--told", " ", "--database-url", filled
    )
    assert (
        status == 2
        and err.strip() == "error: an acknowledgement needs who was told of the critical result"
    )
    status, out, _ = run_cli(
        "worklist",
        "ack",
        "1",
        "--who",
        "dr.b",
        "--told",
        "Dr Ward (ED)",
        "--note",
        "by phone",
        "--database-url",
        filled,
    )
    assert status == 0 and "acknowledged by dr.b" in out
    status, out, _ = run_cli("worklist", "alerts", "--open", "--database-url", filled)
    assert out == ""
    status, _, err = run_cli(
        "worklist", "ack", "5", "--who", "dr.b", "--told", "ED", "--database-url", filled
    )
    assert status == 2 and "alert 5 does not exist" in err


def test_sweep_exits_1_when_a_delivery_fails(
    run_cli: RunCli, filled: str, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    webhook.fail_next = 1
    status, out, err = run_cli(
        "worklist", "sweep", "--database-url", filled, "--triage-config", tmp_path / "triage.toml"
    )
    assert status == 1 and "retrying 1" in out and "HTTP 503" in err


def test_export_feedback(run_cli: RunCli, filled: str, tmp_path: Path) -> None:
    out_csv = tmp_path / "fb.csv"
    status, out, _ = run_cli("worklist", "export-feedback", out_csv, "--database-url", filled)
    assert status == 0 and "1 studies" in out
    assert out_csv.read_text(encoding="utf-8").splitlines()[1].startswith("1.2.1,")


def test_next_claims_the_top_study(run_cli: RunCli, filled: str) -> None:
    status, out, _ = run_cli("worklist", "next", "--reader", "dr.c", "--database-url", filled)
    assert status == 0 and out.startswith("1.1 score") and "in progress for dr.c" in out
    status, out, _ = run_cli("worklist", "list", "--state", "in-progress", "--database-url", filled)
    assert "1 studies" in out and "1.1" in out
    run_cli("worklist", "next", "--reader", "dr.c", "--database-url", filled)
    status, out, _ = run_cli("worklist", "next", "--reader", "dr.c", "--database-url", filled)
    assert status == 1 and out.strip() == "no unread study"
