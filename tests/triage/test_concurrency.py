"""Concurrency: one alert per study and finding, one reader per study (SQLite; PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import delete, func, select

from overread.service.db import Database
from overread.triage import (
    Alert,
    AlertDelivery,
    StudyContext,
    WorklistItem,
    claim_next,
    raise_alerts,
    sweep,
    triage_config,
    upsert_study,
)

from .conftest import NOW, F, WebhookReceiver

WORKERS = 4


def _all_at_once(work: Callable[[int], None]) -> None:
    """Run ``work(0)`` .. ``work(WORKERS - 1)`` in threads released together; re-raise failures."""
    barrier = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(10)
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


def _race(db: Database, uid: str, duplicates: int = WORKERS - 1) -> None:
    config = triage_config()

    def work(version: int) -> None:
        with db.session() as session:
            item = upsert_study(
                session,
                uid,
                [F("Pneumothorax", 0.9, True)],
                StudyContext("ED"),
                config,
                now=NOW,
                model_version=str(version),
            )
            raise_alerts(session, item, config, now=NOW)

    _all_at_once(work)
    with db.session() as session:
        rows = session.execute(
            select(func.count())
            .select_from(WorklistItem)
            .where(WorklistItem.study_instance_uid == uid)
        ).scalar_one()
        alerts = (
            session.execute(select(Alert).where(Alert.study_instance_uid == uid)).scalars().all()
        )
    assert rows == 1
    assert len(alerts) == 1 and alerts[0].duplicates == duplicates


def test_concurrent_triage_sqlite(db: Database) -> None:
    _race(db, "7.1")
    # The row and alert exist now: the second round only adds duplicates.
    _race(db, "7.1", duplicates=2 * WORKERS - 1)


@pytest.mark.service
def test_concurrent_triage_postgresql(pg_db: Database) -> None:
    _race(pg_db, "7.2")


def _claims(db: Database, prefix: str) -> None:
    config = triage_config()
    with db.session() as session:
        for i in range(WORKERS):
            upsert_study(
                session,
                f"{prefix}.{i}",
                [F("Edema", 0.2 * i)],
                StudyContext(f"ward{prefix}"),
                config,
                now=NOW,
            )
    claimed: list[str] = []

    def work(reader: int) -> None:
        with db.session() as session:
            item = claim_next(session, reader=f"dr.{reader}", now=NOW, department=f"ward{prefix}")
            assert item is not None
            claimed.append(item.study_instance_uid)

    _all_at_once(work)
    assert sorted(claimed) == [f"{prefix}.{i}" for i in range(WORKERS)]


def test_concurrent_claims_get_different_studies_sqlite(db: Database) -> None:
    _claims(db, "5")


@pytest.mark.service
def test_concurrent_claims_get_different_studies_postgresql(pg_db: Database) -> None:
    _claims(pg_db, "6")


def _sweepers(db: Database, webhook: WebhookReceiver, prefix: str) -> None:
    config = triage_config(
        {"alerts": {"channels": [{"name": "hook", "kind": "webhook", "url": webhook.url}]}}
    )
    with db.session() as session:
        for i in range(3):
            item = upsert_study(
                session, f"{prefix}.{i}", [F("Pneumothorax", 0.9)], StudyContext(), config, now=NOW
            )
            raise_alerts(session, item, config, now=NOW)

    def work(_index: int) -> None:
        with db.session() as session:
            sweep(session, config, now=NOW)

    _all_at_once(work)
    sent = sorted(m["study_instance_uid"] for m in webhook.received)
    assert sent == [f"{prefix}.{i}" for i in range(3)]
    with db.session() as session:
        attempts = session.execute(select(AlertDelivery.attempts)).scalars().all()
    assert set(attempts) == {1}


def test_concurrent_sweeps_send_each_alert_once_sqlite(
    db: Database, webhook: WebhookReceiver
) -> None:
    _sweepers(db, webhook, "3")


@pytest.mark.service
def test_concurrent_sweeps_send_each_alert_once_postgresql(
    pg_db: Database, webhook: WebhookReceiver
) -> None:
    with pg_db.session() as session:
        session.execute(delete(AlertDelivery))
    _sweepers(pg_db, webhook, "4")
