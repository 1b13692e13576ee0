"""Receiver processes killed in the middle of telling the gateway about an instance."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

import overread
from overread.config import Settings
from overread.harness import storescu
from overread.service import receivers
from overread.service.assembly import StudyAssembler
from overread.service.config import service_config
from overread.service.db import Instance, Study, StudyState
from overread.service.ingest import Ingestor, IngestOutcome
from overread.service.node import open_queue
from overread.service.receivers import (
    TEAR_ENV,
    EventReader,
    ReceiverProcesses,
    encode_event,
)
from overread.service.runtime import ModelIdentity
from overread.service.scp import StorageSCP

from .conftest import make_dx, needs_dcmtk, wait_until

pytestmark = pytest.mark.service


#: A child sending events as fast as its channel takes them, until killed.
_FLOOD = """
import socket, sys
from overread.service.receivers import EventSender
sender = EventSender(socket.socket(fileno=int(sys.argv[1])))
tag, size, number = sys.argv[2], int(sys.argv[3]), 0
while True:
    sender.send("stored", (tag, number, bytes([number % 251]) * size))
    number += 1
"""


class _Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[tuple[int, bytes]]] = {}

    def deliver(self, kind: str, value: Any) -> None:
        assert kind == "stored"
        tag, number, payload = value
        with self.lock:
            self.seen.setdefault(tag, []).append((number, payload))

    def count(self, tag: str) -> int:
        with self.lock:
            return len(self.seen.get(tag, []))

    def intact(self, tag: str) -> bool:
        """Every event of ``tag`` arrived whole, in order, none missing before the last."""
        with self.lock:
            events = list(self.seen.get(tag, []))
        return [n for n, _ in events] == list(range(len(events))) and all(
            payload == bytes([n % 251]) * len(payload) for n, payload in events
        )


def _flooder(reader: EventReader, tag: str, size: int) -> subprocess.Popen[bytes]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    source = str(Path(overread.__file__).parent.parent)
    process = subprocess.Popen(
        [sys.executable, "-c", _FLOOD, str(theirs.fileno()), tag, str(size)],
        pass_fds=[theirs.fileno()],
        env={**os.environ, "PYTHONPATH": source},
    )
    theirs.close()
    reader.add(ours)
    return process


def test_writers_killed_mid_event_never_wedge_the_reader_or_each_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Events larger than the socket's buffer: a child spends most of its time inside a
    # send, so SIGKILL lands in the middle of one (a shared queue's lock would stay held).
    events = _Events()
    reader = EventReader(events.deliver)
    reader.start()
    steady = _flooder(reader, "steady", 64 * 1024)
    killed: list[str] = []
    try:
        for round_ in range(3):
            tag = f"victim{round_}"
            victim = _flooder(reader, tag, 512 * 1024)
            wait_until(lambda tag=tag: events.count(tag) >= 20, timeout=60)  # type: ignore[misc]
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
            killed.append(tag)
            # Its channel ends (the steady writer's stays open) and every event it
            # sent whole arrived intact; the torn one, if any, was dropped.
            wait_until(lambda: reader.open_channels == 1, timeout=10)
            assert events.intact(tag)
            before = events.count("steady")
            wait_until(lambda before=before: events.count("steady") > before + 20, timeout=30)  # type: ignore[misc]
        assert steady.poll() is None and events.intact("steady")
    finally:
        if steady.poll() is None:
            os.kill(steady.pid, signal.SIGKILL)
        steady.wait(10)
        started = time.monotonic()
        reader.close(5)
        assert time.monotonic() - started < 5  # every channel reached its end
    assert reader.open_channels == 0 and len(killed) == 3
    # The kills did land in the middle of events (at least one: each is likely).
    assert "ended in the middle of sending an event" in caplog.text
    assert events.intact("steady")


def test_a_half_sent_event_is_dropped_and_the_channel_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[tuple[str, Any]] = []
    reader = EventReader(lambda kind, value: delivered.append((kind, value)))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader.add(ours)
    reader.start()
    whole = encode_event("released", ["1.2.3"])
    torn = encode_event("stored", "x" * 1000)
    theirs.sendall(whole + whole[:3])  # a header cut short...
    theirs.sendall(whole[3:] + torn[: len(torn) // 2])  # ...completed; then a torn one
    theirs.close()
    wait_until(lambda: reader.open_channels == 0, timeout=10)
    reader.close(5)
    assert delivered == [("released", ["1.2.3"])] * 2
    assert "ended in the middle of sending an event" in caplog.text


class _Models:
    def identify(self, alias: str) -> ModelIdentity:
        return ModelIdentity(alias, "1")

    def get(self, alias: str) -> Any:
        raise AssertionError("no job runs here")


def _send(port: int, paths: list[Path]) -> bool:
    try:
        storescu(port, paths, "OVERREAD", "MODALITY", timeout=60)
    except Exception:  # the receiver taking it was killed: the modality sends again
        return False
    return True


def _send_all(port: int, studies: list[list[Path]]) -> list[bool]:
    results: list[bool] = [False] * len(studies)

    def run(i: int) -> None:
        results[i] = _send(port, studies[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(studies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _studies(root: Path, name: str, count: int, per_study: int) -> list[list[Path]]:
    out = []
    for s in range(count):
        uid = generate_uid()
        out.append(
            [
                make_dx(root / name / f"{s}-{i}.dcm", seed=s * 10 + i, study_uid=uid, size=128)
                for i in range(per_study)
            ]
        )
    return out


@needs_dcmtk
def test_a_receiver_killed_mid_event_is_replaced_and_no_instance_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(receivers, "_RESTART_SECONDS", 0.5)
    token = tmp_path / "tear"
    token.touch()
    # The first child to store an instance sends half of that event and kills itself.
    monkeypatch.setenv(TEAR_ENV, str(token))
    config = service_config(
        Settings(data_dir=tmp_path / "data"),
        dicom_port=0,
        dicom_host="127.0.0.1",
        stable_seconds=1,
    )
    database, store, jobs = open_queue(config)
    assembler = StudyAssembler(config, database, jobs, _Models())
    lock = threading.Lock()
    told: set[str] = set()

    def on_stored(outcome: IngestOutcome) -> None:
        with lock:
            told.add(outcome.sop_instance_uid)
        assembler.wake()

    def on_released(studies: set[str]) -> None:
        assembler.association_released(studies)

    scp = StorageSCP(
        config,
        Ingestor(database, store, on_stored=on_stored),
        on_released=on_released,
        shared_port=True,
    )
    port = scp.start()
    children = ReceiverProcesses(config, 2, on_released=on_released, on_stored=on_stored)
    children.start(scp.listening_socket)
    stop = threading.Event()
    assembling = threading.Thread(target=assembler.run, args=(stop,), daemon=True)
    assembling.start()
    try:
        first = list(children.pids)
        # Send until a child took an instance (the kernel may give the gateway some).
        for round_ in range(10):
            _send_all(port, _studies(tmp_path, f"r{round_}", 4, 3))
            if not token.exists():
                break
        assert not token.exists(), "no child received an instance"
        wait_until(
            lambda: (
                set(children.pids) != set(first)
                and len(children.pids) == 2
                and all(p.is_alive() for p in children._processes)
            ),
            timeout=60,
        )
        killed = set(first) - set(children.pids)
        assert len(killed) == 1
        assert f"DICOM receiver process {killed.pop()} exited (code -9)" in caplog.text
        assert "ended in the middle of sending an event" in caplog.text
        # The replacement and the other child deliver every event of what comes next.
        later = _studies(tmp_path, "later", 6, 3)
        assert _send_all(port, later) == [True] * 6
        wanted = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for study in later
            for p in study
        }
        wait_until(lambda: wanted <= told, timeout=30)

        # Every instance stored is processed: its study completed and routed, those
        # whose event was lost by the stable-age sweep.
        def settled() -> bool:
            with database.session() as session:
                states = session.scalars(select(Study.state)).all()
            return bool(states) and all(s == StudyState.ROUTED.value for s in states)

        wait_until(settled, timeout=60)
        with database.session() as session:
            rows = session.scalars(select(Instance)).all()
            counts = dict(
                session.execute(select(Study.study_instance_uid, Study.instance_count)).all()
            )
        stored = {r.sop_instance_uid for r in rows}
        assert len(rows) == len(stored) and sum(counts.values()) == len(rows)
        assert all(store.exists(r.object_key) for r in rows)
        # At least the torn event's instance was stored without the gateway being told.
        with lock:
            assert told <= stored and len(stored - told) >= 1
    finally:
        stop.set()
        assembler.wake()
        assembling.join(10)
        children.stop()
        scp.stop()
        database.dispose()
