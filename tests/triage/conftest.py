"""Triage fixtures: a database with the gateway and audit tables, a webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from overread.audit import create_tables as create_audit_tables
from overread.results import FindingResult
from overread.service.db import Database

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def F(
    label: str,
    probability: float,
    positive: bool = False,
    proximity: float = 0.0,
    threshold: float = 0.5,
) -> FindingResult:
    """A finding as the inference pipeline reports it."""
    return FindingResult(label, probability, positive, proximity, threshold)


def _open(url: str) -> Database:
    db = Database(url)
    create_audit_tables(db.engine)
    return db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """SQLite in a temporary directory, every table created."""
    database = _open(f"sqlite:///{tmp_path / 'overread.db'}")
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def pg_db(postgres_module_url: str) -> Iterator[Database]:
    """A fresh PostgreSQL database for the test module (dropped afterwards), tables created."""
    database = _open(postgres_module_url)
    try:
        yield database
    finally:
        database.dispose()


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records JSON POSTs.

    Each recorded message gets the request path under ``"path"``; ``fail_next``
    makes the next N requests answer 503 (a receiver that is down).
    """

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_next: int = 0
    # Called while a POST is being answered (what the receiver does meanwhile).
    on_post: Callable[[], None] | None = None
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if receiver.on_post is not None:
                try:
                    receiver.on_post()
                except BaseException as exc:
                    receiver.errors.append(exc)
            with receiver.lock:
                failing = receiver.fail_next > 0
                if failing:
                    receiver.fail_next -= 1
                else:
                    receiver.received.append({"path": self.path, **json.loads(body)})
                    receiver.raw.append((dict(self.headers.items()), body))
            self.send_response(503 if failing else 204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
