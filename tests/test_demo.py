"""``overread demo`` end to end: phantom modality -> gateway -> PACS, and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from overread.demo import COMPREHENSIVE_SR, DemoOptions
from overread.errors import ConfigError

pytestmark = pytest.mark.service


def _demo(data_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "overread",
        "demo",
        "--data-dir",
        str(data_dir),
        "--size",
        "256",
        "--workers",
        "1",
        *args,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


def test_demo_reads_every_study_and_sends_srs_to_the_pacs(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        _demo(data_dir, "--studies", "4", "--rate", "4", "--exit-when-done"),
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "(generated)" in done.stdout
    assert "demo user: demo (radiologist)" in done.stdout

    srs = [
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in sorted((data_dir / "pacs").glob("*.dcm"))
        if str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) == COMPREHENSIVE_SR
    ]
    cohort = next((data_dir / "cohorts").iterdir())
    sent = [pydicom.dcmread(p, stop_before_pixels=True) for p in (cohort / "images").rglob("*.dcm")]
    studies = {str(d.StudyInstanceUID) for d in sent}
    assert len(studies) == 4
    assert len(srs) >= len(studies)  # one SR per image at least
    assert {str(sr.StudyInstanceUID) for sr in srs} == studies

    from overread.audit import verify_chain
    from overread.service.db import Database
    from overread.triage import WorklistItem

    database = Database(f"sqlite:///{data_dir / 'gateway' / 'overread.db'}", create=False)
    try:
        with database.session() as session:
            uids = set(session.scalars(select(WorklistItem.study_instance_uid)).all())
            rows = session.scalar(select(func.count()).select_from(WorklistItem))
        verdict = verify_chain(database.engine)
    finally:
        database.dispose()
    assert rows == 4 and uids == studies
    assert verdict.ok, verdict.message
    assert "audit verify: OK" in done.stdout
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "overread",
            "audit",
            "verify",
            "--data-dir",
            str(data_dir / "gateway"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_sigint_mid_run_stops_everything_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    process = subprocess.Popen(
        _demo(data_dir, "--studies", "6", "--rate", "0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    seen: list[str] = []
    ready = threading.Event()

    def _read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith("ready in"):
                ready.set()

    reader = threading.Thread(target=_read, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), "".join(seen)
        time.sleep(2.5)  # mid-run: some studies sent, others not yet
        process.send_signal(signal.SIGINT)
        process.wait(60)
        reader.join(10)
        assert process.stderr is not None
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out = "".join(seen)
    assert process.returncode in (0, 130), err
    assert "Traceback" not in err
    assert "stopped" in out
    # Interrupted before the sixth study was due: fewer SRs than studies.
    assert len(list((data_dir / "pacs").glob("*.dcm"))) < 6


def test_a_second_run_reuses_the_cohort(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    args = _demo(data_dir, "--studies", "2", "--rate", "10", "--exit-when-done")
    first = subprocess.run(args, capture_output=True, text=True, timeout=240, env=_env())
    second = subprocess.run(args, capture_output=True, text=True, timeout=240, env=_env())
    assert first.returncode == 0 and second.returncode == 0, second.stdout + second.stderr
    assert "(generated)" in first.stdout and "(reused)" in second.stdout
    # The gateway and the PACS start empty each run: this run's counts only.
    assert "sent 2/2 studies, read 2" in second.stdout
    assert len(list((data_dir / "pacs").glob("*.dcm"))) == 2


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [("studies", 0, "--studies"), ("rate", 0.0, "--rate"), ("duration", -1.0, "--duration")],
)
def test_unusable_options_are_refused_by_name(field: str, value: float, option: str) -> None:
    options = DemoOptions(data_dir=Path("unused"), **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=option):
        options.validate()


def test_cli_refuses_a_zero_rate_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        _demo(tmp_path / "demo", "--rate", "0"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --rate must be above 0 studies per second, not 0.0"
    assert not (tmp_path / "demo").exists()
