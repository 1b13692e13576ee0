"""Critical-finding alerts: raising, suppression, retries, acknowledgement, escalation.

Deliveries go to a real HTTP server on loopback; the clock is injected.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from overread.audit import AuditEvent, verify_chain
from overread.errors import ConfigError
from overread.service.db import Database
from overread.triage import (
    Alert,
    AlertDelivery,
    StudyContext,
    TriageConfig,
    acknowledge,
    alert_findings,
    alert_notes,
    backoff,
    next_escalation_at,
    raise_alerts,
    record_feedback,
    run_sweep,
    sweep,
    triage_config,
    upsert_study,
)

from .conftest import NOW, F, WebhookReceiver


def _config(webhook: WebhookReceiver, **alerts: Any) -> TriageConfig:
    base = webhook.url.rsplit("/", 1)[0]
    return triage_config(
        {
            "alerts": {
                "channels": [
                    {"name": "reading-room", "kind": "webhook", "url": f"{base}/room"},
                    {"name": "on-call", "kind": "webhook", "url": f"{base}/oncall", "level": 1},
                ],
                **alerts,
            }
        }
    )


def _triage(db: Database, config: TriageConfig, uid: str, findings: list[F], at: Any) -> list[int]:
    with db.session() as session:
        item = upsert_study(session, uid, findings, StudyContext("ED", 70, at), config, now=at)
        return [a.id for a in raise_alerts(session, item, config, now=at)]


def _alert_events(db: Database) -> list[dict[str, Any]]:
    with db.session() as session:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.action == "alert").order_by(AuditEvent.seq)
        ).scalars()
        return [{"actor": r.actor, **r.details} for r in rows]


def test_critical_finding_raises_one_alert_delivered_by_webhook(
    db: Database, webhook: WebhookReceiver
) -> None:
    config = _config(webhook)
    ids = _triage(db, config, "1.2.3", [F("Pneumothorax", 0.92, True), F("Edema", 0.99)], NOW)
    assert len(ids) == 1
    with db.session() as session:
        report = sweep(session, config, now=NOW)
    assert len(report.sent) == 1 and not report.errors
    [message] = webhook.received
    assert message["path"] == "/room"
    assert message["study_instance_uid"] == "1.2.3"
    assert message["finding"] == "Pneumothorax"
    assert message["probability"] == pytest.approx(0.92)
    assert message["alert_id"] == ids[0]
    with db.session() as session:
        delivery = session.execute(select(AlertDelivery)).scalar_one()
        assert (delivery.state, delivery.attempts, delivery.sent_at) == ("sent", 1, NOW)
        # Nothing more is due: a second sweep sends nothing.
        assert sweep(session, config, now=NOW + timedelta(minutes=1)).sent == []
    events = _alert_events(db)
    assert [e["event"] for e in events] == ["raised"]
    assert events[0]["finding"] == "Pneumothorax"
    assert verify_chain(db.engine).ok


def test_thresholds_decide_what_is_critical(db: Database, webhook: WebhookReceiver) -> None:
    config = _config(webhook)
    assert _triage(db, config, "1", [F("Pneumothorax", 0.49)], NOW) == []
    assert _triage(db, config, "2", [F("Pleural Effusion", 0.85, True)], NOW) == []
    assert len(_triage(db, config, "3", [F("Pleural Effusion", 0.91, True)], NOW)) == 1
    custom = _config(webhook, critical={"Fracture": 0.3})
    assert len(_triage(db, custom, "4", [F("Fracture", 0.35), F("Pneumothorax", 0.99)], NOW)) == 1


def test_duplicates_within_the_window_are_suppressed(
    db: Database, webhook: WebhookReceiver
) -> None:
    config = _config(webhook, suppress_minutes=60)
    first = _triage(db, config, "1.9", [F("Pneumothorax", 0.8)], NOW)
    again = _triage(db, config, "1.9", [F("Pneumothorax", 0.9)], NOW + timedelta(minutes=30))
    assert len(first) == 1 and again == []
    with db.session() as session:
        alert = session.get(Alert, first[0])
        assert alert is not None
        assert alert.duplicates == 1
        assert alert.last_seen_at == NOW + timedelta(minutes=30)
        assert alert.probability == pytest.approx(0.9)
    later = _triage(db, config, "1.9", [F("Pneumothorax", 0.9)], NOW + timedelta(minutes=61))
    assert len(later) == 1 and later != first
    # Another study with the same finding is its own alert.
    assert len(_triage(db, config, "2.9", [F("Pneumothorax", 0.9)], NOW)) == 1


def test_failed_deliveries_are_retried_with_backoff(db: Database, webhook: WebhookReceiver) -> None:
    config = _config(webhook, backoff_seconds=10)
    _triage(db, config, "5.1", [F("Pneumothorax", 0.9)], NOW)
    webhook.fail_next = 2
    with db.session() as session:
        report = sweep(session, config, now=NOW)
        assert len(report.retrying) == 1 and "HTTP 503" in next(iter(report.errors.values()))
        delivery = session.execute(select(AlertDelivery)).scalar_one()
        assert delivery.next_attempt_at == NOW + timedelta(seconds=10)
    with db.session() as session:
        assert sweep(session, config, now=NOW + timedelta(seconds=9)).retrying == []
        assert len(sweep(session, config, now=NOW + timedelta(seconds=10)).retrying) == 1
        delivery = session.execute(select(AlertDelivery)).scalar_one()
        assert delivery.next_attempt_at == NOW + timedelta(seconds=30)
        assert sweep(session, config, now=NOW + timedelta(seconds=29)).sent == []
        assert len(sweep(session, config, now=NOW + timedelta(seconds=30)).sent) == 1
        assert delivery.attempts == 3 and delivery.last_error is None
    assert len(webhook.received) == 1


def test_delivery_fails_for_good_after_max_attempts_and_escalates(
    db: Database, webhook: WebhookReceiver
) -> None:
    config = _config(webhook, max_attempts=2, backoff_seconds=1)
    _triage(db, config, "5.2", [F("Pneumothorax", 0.9)], NOW)
    webhook.fail_next = 10
    with db.session() as session:
        sweep(session, config, now=NOW)
        report = sweep(session, config, now=NOW + timedelta(seconds=1))
        assert len(report.failed) == 1
        delivery = session.execute(select(AlertDelivery)).scalar_one()
        assert delivery.state == "failed" and "503" in (delivery.last_error or "")
        # Nobody was told: the next sweep escalates at once, well before 15 minutes,
        # and the failed delivery is not attempted again.
        report = sweep(session, config, now=NOW + timedelta(seconds=2))
        assert report.escalated == [delivery.alert_id]
        assert delivery.id not in report.errors and len(report.retrying) == 1


def test_unreachable_webhook_is_an_error_not_a_crash(db: Database) -> None:
    config = triage_config(
        {
            "alerts": {
                "channels": [{"name": "dead", "kind": "webhook", "url": "http://127.0.0.1:9/"}]
            }
        }
    )
    _triage(db, config, "5.3", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        report = sweep(session, config, now=NOW)
    assert "webhook dead (http://127.0.0.1:9/)" in next(iter(report.errors.values()))


def test_unacknowledged_alert_escalates_to_the_next_level(
    db: Database, webhook: WebhookReceiver
) -> None:
    config = _config(webhook, escalate_after_minutes=15)
    [alert_id] = _triage(db, config, "6.1", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        sweep(session, config, now=NOW)
        assert sweep(session, config, now=NOW + timedelta(minutes=14)).escalated == []
    with db.session() as session:
        report = sweep(session, config, now=NOW + timedelta(minutes=15))
        assert report.escalated == [alert_id] and len(report.sent) == 1
    assert [m["path"] for m in webhook.received] == ["/room", "/oncall"]
    assert webhook.received[1]["level"] == 1
    with db.session() as session:
        # No level 2 channel: the alert stays at level 1.
        assert sweep(session, config, now=NOW + timedelta(hours=2)).escalated == []
        alert = acknowledge(
            session,
            alert_id,
            who="dr.oncall",
            communicated_to="Dr Ward, ED registrar, by phone",
            now=NOW + timedelta(minutes=20),
        )
        assert alert.state == "acknowledged" and alert.acknowledged_by == "dr.oncall"
    events = _alert_events(db)
    assert [e["event"] for e in events] == ["raised", "escalated", "acknowledged"]
    assert events[2]["actor"] == "dr.oncall"
    assert events[2]["seconds_to_acknowledge"] == pytest.approx(1200)
    assert events[2]["communicated_to"] == "Dr Ward, ED registrar, by phone"


def test_acknowledged_alert_neither_escalates_nor_delivers(
    db: Database, webhook: WebhookReceiver
) -> None:
    config = _config(webhook)
    [alert_id] = _triage(db, config, "6.2", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        acknowledge(
            session, alert_id, who="dr.a", communicated_to="ED", now=NOW + timedelta(seconds=5)
        )
        # Acknowledging twice keeps the first acknowledgement.
        again = acknowledge(
            session, alert_id, who="dr.b", communicated_to="ICU", now=NOW + timedelta(seconds=9)
        )
        assert again.acknowledged_by == "dr.a"
        report = sweep(session, config, now=NOW + timedelta(hours=1))
        assert report.sent == [] and report.escalated == []
        delivery = session.execute(select(AlertDelivery)).scalar_one()
        assert delivery.state == "cancelled"
    assert webhook.received == []
    with db.session() as session:
        with pytest.raises(KeyError):
            acknowledge(session, 999, who="dr.a", communicated_to="ED", now=NOW)
        with pytest.raises(ConfigError, match="who acknowledged"):
            acknowledge(session, alert_id, who="", communicated_to="ED", now=NOW)


def test_backoff_doubles_and_is_capped() -> None:
    settings = TriageConfig().alerts.model_copy(
        update={"backoff_seconds": 10, "max_backoff_seconds": 60}
    )
    assert [backoff(n, settings).total_seconds() for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_run_sweep_sends_with_no_transaction_open(db: Database, webhook: WebhookReceiver) -> None:
    # While the receiver answers, another writer (the SCP storing an instance, say)
    # must get the SQLite write lock without waiting for the sweep.
    database_file = db.engine.url.database
    assert database_file is not None

    def other_writer() -> None:
        connection = sqlite3.connect(database_file, timeout=0.5)
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS scratch (x INTEGER)")
            connection.execute("INSERT INTO scratch VALUES (1)")
            connection.commit()
        finally:
            connection.close()

    webhook.on_post = other_writer
    config = _config(webhook)
    _triage(db, config, "8.1", [F("Pneumothorax", 0.9)], NOW)
    report = run_sweep(db, config, now=NOW)
    assert len(report.sent) == 1 and webhook.errors == []
    # The single-transaction sweep holds the lock while it sends: the writer times out.
    _triage(db, config, "8.2", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        assert len(sweep(session, config, now=NOW).sent) == 1
    assert len(webhook.errors) == 1 and "locked" in str(webhook.errors[0])
    with db.session() as session:
        states = session.execute(select(AlertDelivery.state)).scalars().all()
    assert states == ["sent", "sent"]


def test_run_sweep_retries_and_escalates_like_sweep(db: Database, webhook: WebhookReceiver) -> None:
    config = _config(webhook, backoff_seconds=10, escalate_after_minutes=15)
    [alert_id] = _triage(db, config, "8.3", [F("Pneumothorax", 0.9)], NOW)
    webhook.fail_next = 1
    first = run_sweep(db, config, now=NOW)
    assert len(first.retrying) == 1
    assert run_sweep(db, config, now=NOW + timedelta(seconds=9)).sent == []
    assert len(run_sweep(db, config, now=NOW + timedelta(seconds=10)).sent) == 1
    later = run_sweep(db, config, now=NOW + timedelta(minutes=15))
    assert later.escalated == [alert_id] and len(later.sent) == 1
    assert [m["path"] for m in webhook.received] == ["/room", "/oncall"]


def test_one_studys_critical_findings_share_one_alert(
    db: Database, webhook: WebhookReceiver
) -> None:
    critical = {"Pneumothorax": 0.5, "Fracture": 0.5, "Edema": 0.5, "Pleural Effusion": 0.9}
    config = _config(webhook, critical=critical)
    findings = [F("Fracture", 0.7), F("Pneumothorax", 0.9), F("Edema", 0.6)]
    ids = _triage(db, config, "9.1", findings, NOW)
    assert len(ids) == 1
    with db.session() as session:
        alert = session.get(Alert, ids[0])
        assert alert is not None
        # The most probable finding leads; all three are on the one alert.
        assert alert.finding == "Pneumothorax"
        assert [f.finding for f in alert_findings(session, alert)] == [
            "Pneumothorax",
            "Fracture",
            "Edema",
        ]
        assert session.scalar(select(func.count()).select_from(Alert)) == 1
        assert len(sweep(session, config, now=NOW).sent) == 1
    [message] = webhook.received
    assert [f["finding"] for f in message["findings"]] == ["Pneumothorax", "Fracture", "Edema"]
    assert "not verified" in message["notice"]
    # A later run with a new critical finding joins the open alert, raises nothing new.
    later = NOW + timedelta(minutes=2)
    more = [*findings, F("Pleural Effusion", 0.95)]
    assert _triage(db, config, "9.1", more, later) == []
    with db.session() as session:
        alert = session.get(Alert, ids[0])
        assert alert is not None
        assert [f.finding for f in alert_findings(session, alert)][-1] == "Pleural Effusion"
    assert [e["event"] for e in _alert_events(db)] == ["raised", "findings-added"]


def test_acknowledging_needs_who_was_told_and_keeps_the_note(
    db: Database, webhook: WebhookReceiver
) -> None:
    config = _config(webhook)
    [alert_id] = _triage(db, config, "9.2", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        for told in ("", "   "):
            with pytest.raises(ConfigError, match="who was told"):
                acknowledge(session, alert_id, who="dr.a", communicated_to=told, now=NOW)
        assert session.get(Alert, alert_id).state == "open"  # type: ignore[union-attr]
        alert = acknowledge(
            session,
            alert_id,
            who="dr.a",
            communicated_to="Dr  Ward (ED)\n by phone",
            note="chest drain requested",
            now=NOW + timedelta(minutes=3),
        )
        [note] = alert_notes(session, alert)
        assert (note.event, note.actor, note.communicated_to, note.note) == (
            "acknowledged",
            "dr.a",
            "Dr Ward (ED) by phone",
            "chest drain requested",
        )
    [event] = [e for e in _alert_events(db) if e["event"] == "acknowledged"]
    assert event["communicated_to"] == "Dr Ward (ED) by phone"
    assert event["note"] == "chest drain requested"


def test_a_verdict_on_the_study_closes_its_alert(db: Database, webhook: WebhookReceiver) -> None:
    config = _config(webhook, escalate_after_minutes=15)
    [alert_id] = _triage(db, config, "9.3", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        assert next_escalation_at(alert, config.alerts) == NOW + timedelta(minutes=15)
        record_feedback(
            session,
            "9.3",
            "Pneumothorax",
            "agree",
            reader="dr.grey",
            now=NOW + timedelta(minutes=1),
        )
        assert alert.state == "closed"
        assert next_escalation_at(alert, config.alerts) is None
        assert [n.event for n in alert_notes(session, alert)] == ["closed"]
        # Closed: nothing is delivered and nothing escalates.
        report = sweep(session, config, now=NOW + timedelta(hours=1))
        assert report.sent == [] and report.escalated == []
        delivery = session.execute(select(AlertDelivery)).scalar_one()
        assert delivery.state == "cancelled"
    assert webhook.received == []
    assert [e["event"] for e in _alert_events(db)] == ["raised", "closed"]


@pytest.fixture
def alert_loads() -> Iterator[list[int]]:
    """The ids of the alerts loaded from the database while the test runs."""
    loaded: list[int] = []

    def on_load(target: Alert, _context: Any) -> None:
        loaded.append(target.id)

    event.listen(Alert, "load", on_load)
    yield loaded
    event.remove(Alert, "load", on_load)


def test_escalation_loads_only_alerts_that_can_move(db: Database, alert_loads: list[int]) -> None:
    # No channel at all (the soak's set-up): open alerts pile up unacknowledged, and
    # the periodic sweep must not load every one of them on each pass.
    config = TriageConfig()
    for index in range(30):
        _triage(db, config, f"9.{index}", [F("Pneumothorax", 0.9)], NOW)
    alert_loads.clear()
    with db.session() as session:
        assert sweep(session, config, now=NOW + timedelta(hours=2)).escalated == []
        assert session.scalar(select(func.count(Alert.id)).where(Alert.state == "open")) == 30
    assert alert_loads == []


def test_escalation_still_moves_alerts_with_a_next_level(
    db: Database, webhook: WebhookReceiver, alert_loads: list[int]
) -> None:
    config = _config(webhook, escalate_after_minutes=15)
    ids = [_triage(db, config, f"9.{i}", [F("Pneumothorax", 0.9)], NOW)[0] for i in range(3)]
    with db.session() as session:
        assert sorted(sweep(session, config, now=NOW + timedelta(minutes=15)).escalated) == ids
    alert_loads.clear()
    with db.session() as session:
        # At the top level now (no level 2 channel): the next sweep loads none of them.
        assert sweep(session, config, now=NOW + timedelta(hours=2)).escalated == []
    assert alert_loads == []


def test_escalation_skips_a_level_with_no_channel(db: Database, webhook: WebhookReceiver) -> None:
    # Channels at levels 0 and 2 only: an unacknowledged alert must not stay at level 0
    # for want of a level-1 channel (a critical finding would be buried).
    base = webhook.url.rsplit("/", 1)[0]
    config = triage_config(
        {
            "alerts": {
                "channels": [
                    {"name": "reading-room", "kind": "webhook", "url": f"{base}/room"},
                    {"name": "head", "kind": "webhook", "url": f"{base}/head", "level": 2},
                ],
                "escalate_after_minutes": 15,
            }
        }
    )
    [alert_id] = _triage(db, config, "9.9", [F("Pneumothorax", 0.9)], NOW)
    with db.session() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        assert next_escalation_at(alert, config.alerts) == NOW + timedelta(minutes=15)
        sweep(session, config, now=NOW)
        report = sweep(session, config, now=NOW + timedelta(minutes=15))
        assert report.escalated == [alert_id]
        assert session.get(Alert, alert_id).level == 2  # type: ignore[union-attr]
    assert [m["path"] for m in webhook.received] == ["/room", "/head"]
    assert webhook.received[1]["level"] == 2
    with db.session() as session:
        assert sweep(session, config, now=NOW + timedelta(hours=2)).escalated == []
        alert = session.get(Alert, alert_id)
        assert alert is not None and next_escalation_at(alert, config.alerts) is None
