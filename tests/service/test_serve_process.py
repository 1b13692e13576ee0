"""``overread serve`` as a real process: the whole flow, kill -9 mid-job, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.errors import ServiceError
from overread.harness import storescu
from overread.service.db import Database, Job, Result

from .conftest import Storescp, free_port, needs_dcmtk, wait_for_port

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pytest.importorskip("overread.service.outputs", reason="the result builders are not importable")


class ServeProcess:
    """``overread serve`` in a subprocess on free ports."""

    def __init__(self, data_dir: Path, pacs: Storescp, *extra: str, workers: int = 1) -> None:
        self.data_dir = data_dir
        self.dicom_port = free_port()
        self.http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERREAD_")}
        self.log = (data_dir.parent / f"serve-{time.monotonic_ns()}.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overread",
                "serve",
                "--data-dir",
                str(data_dir),
                "--dicom-port",
                str(self.dicom_port),
                "--http-port",
                str(self.http_port),
                "--destination",
                f"PACS=PACSAE@127.0.0.1:{pacs.port}",
                "--allow-ae",
                "MODALITY@127.0.0.1",
                "--stable-seconds",
                "2",
                "--workers",
                str(workers),
                "--lease-seconds",
                "5",
                *extra,
            ],
            cwd=data_dir.parent,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.dicom_port, timeout=120)
            wait_for_port(self.http_port, timeout=30)
        except ServiceError:
            self.kill()
            raise AssertionError(Path(self.log.name).read_text()) from None

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup at all
        self.process.wait(30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def _start(pacs: Storescp, *extra: str, workers: int = 1) -> ServeProcess:
        process = ServeProcess(tmp_path / "data", pacs, *extra, workers=workers)
        started.append(process)
        return process

    yield _start
    for process in started:
        if process.process.poll() is None:
            process.kill()
        process.log.close()


def _jobs(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def _wait(predicate: Callable[[], bool], timeout: float = 120.0, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


def _sr_uids(pacs: Storescp) -> list[str]:
    return [str(pydicom.dcmread(p).SOPInstanceUID) for p in pacs.files()]


def test_serve_end_to_end_with_health_and_clean_shutdown(
    serve: Callable[..., ServeProcess],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    gateway = serve(storescp)
    health = httpx.get(f"http://127.0.0.1:{gateway.http_port}/health", timeout=10).json()
    assert health["status"] == "ok" and health["ae_title"] == "OVERREAD"
    image = dx_factory(size=256)
    storescu(gateway.dicom_port, [image])
    db = Database(f"sqlite:///{tmp_path / 'data' / 'overread.db'}", create=False)
    _wait(lambda: [j.state for j in _jobs(db)] == ["succeeded", "succeeded"])
    [sr] = [pydicom.dcmread(p) for p in storescp.files()]
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == pydicom.dcmread(image).StudyInstanceUID
    assert gateway.terminate() == 0
    assert "stopped" in Path(gateway.log.name).read_text()


def test_kill_9_mid_job_then_restart_completes_the_job_exactly_once(
    serve: Callable[..., ServeProcess],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    study = generate_uid()
    images = [dx_factory(study_uid=study, size=512) for _ in range(24)]
    gateway = serve(storescp)
    db = Database(f"sqlite:///{tmp_path / 'data' / 'overread.db'}", create=False)
    storescu(gateway.dicom_port, [*images])
    _wait(lambda: any(j.state == "running" for j in _jobs(db)), poll=0.01)
    gateway.kill()  # kill -9 while the worker holds the job
    [job] = [j for j in _jobs(db) if j.kind == "infer"]
    if job.state != "running":
        pytest.fail(f"the job finished before the kill ({job.state}); make the study larger")
    with db.session() as session:
        assert session.scalars(select(Result)).all() == []

    restarted = serve(storescp)
    _wait(lambda: {j.state for j in _jobs(db)} == {"succeeded"} and len(_jobs(db)) == 2)
    infer = next(j for j in _jobs(db) if j.kind == "infer")
    assert infer.attempts == 2  # the lost attempt counted, the lease was taken over
    with db.session() as session:
        results = session.scalars(select(Result)).all()
        assert len(results) == 1 and len(results[0].artifacts) == 1  # one SR for the study
    [sr_file] = storescp.files()  # sent once, not once per attempt
    evidence = pydicom.dcmread(sr_file).CurrentRequestedProcedureEvidenceSequence[0]
    referenced = {
        i.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }  # fmt: skip
    assert referenced == {str(pydicom.dcmread(p).SOPInstanceUID) for p in images}
    assert restarted.terminate() == 0


class WorkerProcess:
    """``overread -v worker`` in a subprocess, its output in a file."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERREAD_")}
        self.log_path = data_dir.parent / f"worker-{time.monotonic_ns()}.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "overread",
                    "-v",
                    "worker",
                    "--data-dir",
                    str(data_dir),
                    *extra,
                ],
                cwd=data_dir.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        return self.process.returncode, self.output()


def test_restart_with_jobs_queued_loses_none_and_a_worker_process_runs_them(
    serve: Callable[..., ServeProcess],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
    database_url: str,
) -> None:
    url = ["--database-url", database_url]
    receiver = serve(storescp, *url, workers=0)  # receive and route, run nothing
    db = Database(database_url, create=False)
    for _ in range(3):
        storescu(receiver.dicom_port, [dx_factory(size=256)])
    _wait(lambda: len(_jobs(db)) == 3 and {j.state for j in _jobs(db)} == {"queued"})
    assert receiver.terminate() == 0
    assert {j.state for j in _jobs(db)} == {"queued"}  # nothing lost, nothing started
    receiver = serve(storescp, *url, workers=0)
    worker = WorkerProcess(tmp_path / "data", *url, "--workers", "2")
    try:
        _wait(lambda: len(_jobs(db)) == 6 and {j.state for j in _jobs(db)} == {"succeeded"})
    finally:
        status, output = worker.terminate()
    assert status == 0, output
    assert "overread worker: 2 worker(s)" in output
    assert len(set(_sr_uids(storescp))) == 3
    assert receiver.terminate() == 0


def test_wake_ups_reach_worker_processes_through_rabbitmq(
    serve: Callable[..., ServeProcess],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.skip("RabbitMQ not reachable on 127.0.0.1:5672")
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    gateway = serve(storescp, "--broker", broker, workers=0)
    # The worker polls only every 10 minutes: a job done sooner was woken by the broker.
    worker = WorkerProcess(tmp_path / "data", "--broker", broker, "--poll-seconds", "600")
    try:
        _wait(lambda: "ready" in worker.output(), timeout=120)
        db = Database(f"sqlite:///{tmp_path / 'data' / 'overread.db'}", create=False)
        storescu(gateway.dicom_port, [dx_factory(size=256)])
        _wait(lambda: [j.state for j in _jobs(db)] == ["succeeded", "succeeded"], timeout=120)
    finally:
        status, output = worker.terminate()
    assert "wake-up from the broker" in output
    assert status == 0, output
    assert len(storescp.files()) == 1
    assert gateway.terminate() == 0


def test_two_worker_processes_on_one_host_share_the_broker(
    serve: Callable[..., ServeProcess],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.skip("RabbitMQ not reachable on 127.0.0.1:5672")
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    gateway = serve(storescp, "--broker", broker, workers=0)
    # Both poll only every 10 minutes: jobs done sooner were woken by the broker.
    workers = [
        WorkerProcess(tmp_path / "data", "--broker", broker, "--poll-seconds", "600")
        for _ in range(2)
    ]
    try:
        for worker in workers:
            _wait(lambda w=worker: "ready" in w.output(), timeout=120)  # type: ignore[misc]
        db = Database(f"sqlite:///{tmp_path / 'data' / 'overread.db'}", create=False)
        for _ in range(3):
            storescu(gateway.dicom_port, [dx_factory(size=256)])
        _wait(lambda: len(_jobs(db)) == 6 and {j.state for j in _jobs(db)} == {"succeeded"})
        # Neither died at start (a second Celery node of one name is refused by RabbitMQ).
        assert [w.process.poll() for w in workers] == [None, None]
    finally:
        results = [w.terminate() for w in workers]
    for status, output in results:
        assert status == 0, output
        assert "Unrecoverable" not in output
    assert len(set(_sr_uids(storescp))) == 3
    assert gateway.terminate() == 0
