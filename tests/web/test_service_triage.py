"""The service's periodic triage sweep: alerts delivered and escalated, and the worklist
rescored as studies wait, by the background thread of a started gateway."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overread.service.db import utcnow
from overread.triage.schema import Alert, AlertDelivery, WorklistItem

from .conftest import make_gateway, seed_study

pytestmark = pytest.mark.service


class WebhookSink:
    """A local HTTP endpoint recording the JSON bodies posted to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    hook = WebhookSink()
    yield hook
    hook.close()


def _wait(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_started_service_delivers_escalates_and_rescores(tmp_path: Path, sink: WebhookSink) -> None:
    triage = {
        "alerts": {
            "channels": [
                {"name": "ward", "kind": "webhook", "url": sink.url, "level": 0},
                {"name": "on-call", "kind": "webhook", "url": sink.url, "level": 1},
            ],
            "escalate_after_minutes": 0.01,  # 0.6 s unacknowledged: escalate
        }
    }
    service = make_gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'o.db'}", triage=triage)
    service.triage_interval = 0.2
    uid, alert_id, _ = seed_study(service)
    with service.database.session() as session:
        item = session.scalar(select(WorklistItem))
        assert item is not None
        item.received_at = utcnow() - timedelta(hours=3)  # waited longer than it was scored for
        before = item.score

    def deliveries() -> list[str]:
        with service.database.session() as session:
            return list(session.scalars(select(AlertDelivery.state)).all())

    service.start()
    try:
        # The sweep records a delivery after the webhook answered: wait for both.
        _wait(lambda: len(sink.received) >= 2 and deliveries() == ["sent", "sent"])
        levels = sorted(m["level"] for m in sink.received[:2])
        assert levels == [0, 1] and {m["study_instance_uid"] for m in sink.received} == {uid}
        with service.database.session() as session:
            alert = session.get(Alert, alert_id)
            assert alert is not None and alert.level == 1 and alert.escalated_at is not None
            sent = session.scalars(select(AlertDelivery.state)).all()
            assert sent == ["sent", "sent"]
            rescored = session.scalar(select(WorklistItem.score))
        assert rescored is not None and rescored > before  # the waiting-time term grew
    finally:
        service.stop(timeout=10)
    assert service._triage_thread is not None and not service._triage_thread.is_alive()


def test_run_triage_once_without_channels_only_rescores(tmp_path: Path) -> None:
    service = make_gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'o.db'}")
    seed_study(service)
    later = utcnow() + timedelta(hours=2)
    run = service.run_triage(now=later)
    assert run.rescored == 1 and run.sweep.sent == [] and run.sweep.escalated == []
    with service.database.session() as session:
        item = session.scalar(select(WorklistItem))
        assert item is not None and item.scored_at == later
    # Later passes rescore only the studies whose wait crossed a step since.
    assert service.run_triage(now=later + timedelta(seconds=1)).rescored == 0
    assert service.run_triage(now=later + timedelta(minutes=5)).rescored == 1
    service.database.dispose()
