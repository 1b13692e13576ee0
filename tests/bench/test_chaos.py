"""``bench chaos``: its checker flags each broken promise, and a short run passes."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from dataclasses import asdict

import pytest

from overread.bench.chaos import (
    Backend,
    Channel,
    ChaosObservation,
    ChaosOptions,
    DeliveredReport,
    Fault,
    FaultRow,
    HttpAnswer,
    Probe,
    SentInstance,
    assess,
    benchmark_chaos,
    check_peers,
)
from overread.errors import ServiceError

RunCli = Callable[..., tuple[int, str, str]]


def _sent(sop: str, study: str, fault: Fault = Fault.NONE, *, acked: bool = True) -> SentInstance:
    return SentInstance(sop, study, fault, Channel.C_STORE, 0x0000 if acked else 0xA700, acked)


def _clean() -> ChaosObservation:
    """Two studies acknowledged, stored, reported once each and audited: nothing wrong."""
    return ChaosObservation(
        Backend.SQLITE,
        sent=[
            _sent("1.1", "1"),
            _sent("2.1", "2", Fault.KILL),
            _sent("2.2", "2", Fault.KILL),
            _sent("3.1", "3", Fault.DISK_FULL, acked=False),
        ],
        stored={"1.1", "2.1", "2.2"},
        delivered=[
            DeliveredReport("9.1", "1", "cxr 1.0", "a"),
            DeliveredReport("9.2", "2", "cxr 1.0", "b"),
            DeliveredReport("9.3", "2", "cxr 1.0", "b"),  # a duplicate, same content: allowed
        ],
        receive_audited={"1.1", "2.1", "2.2"},
        export_audited={"9.1", "9.2", "9.3"},
        http=[HttpAnswer(Fault.OVERSIZED, "login, 200 MB JSON declared", 413, True)],
        probes=[Probe(Fault.IDLE_FLOOD, "C-ECHO during the flood", True)],
    )


def _row(rows: list[FaultRow], fault: str) -> FaultRow:
    return next(r for r in rows if r.fault == fault)


def test_a_clean_run_passes_and_counts_per_fault() -> None:
    verdict = assess(_clean())
    assert verdict.passed, verdict.problems
    total = _row(verdict.rows, "all")
    assert (total.sent, total.acknowledged, total.unacknowledged, total.stored, total.lost) == (
        4,
        3,
        1,
        3,
        0,
    )
    assert (total.studies_acknowledged, total.studies_delivered) == (2, 2)
    assert (total.reports_delivered, total.export_audited) == (3, 3)
    kill = _row(verdict.rows, Fault.KILL.value)
    assert (kill.sent, kill.acknowledged, kill.reports_delivered) == (2, 2, 2)
    assert _row(verdict.rows, Fault.DISK_FULL.value).unacknowledged == 1


def test_a_lost_instance_is_flagged() -> None:
    observation = _clean()
    observation.stored.discard("2.2")  # acknowledged with 0x0000, then gone
    verdict = assess(observation)
    assert not verdict.passed
    assert any("1 acknowledged instance(s) not stored: 2.2" in p for p in verdict.problems)
    assert _row(verdict.rows, "all").lost == 1
    assert _row(verdict.rows, Fault.KILL.value).lost == 1


def test_an_acknowledged_study_without_a_report_is_flagged() -> None:
    observation = _clean()
    observation.delivered = [r for r in observation.delivered if r.study_instance_uid != "1"]
    verdict = assess(observation)
    assert any("without a report at the PACS: 1" in p for p in verdict.problems)
    assert _row(verdict.rows, Fault.NONE.value).studies_delivered == 0


def test_a_duplicate_report_with_different_content_is_flagged() -> None:
    observation = _clean()
    observation.delivered.append(DeliveredReport("9.4", "2", "cxr 1.0", "c"))
    observation.export_audited.add("9.4")
    verdict = assess(observation)
    assert any("different content" in p and ": 2" in p for p in verdict.problems)
    assert _row(verdict.rows, Fault.KILL.value).conflicting_duplicates == 1
    # Another model's report of the same study is no conflict.
    observation.delivered[-1] = DeliveredReport("9.4", "2", "other 2.0", "c")
    assert assess(observation).passed


def test_missing_audit_events_are_flagged() -> None:
    observation = _clean()
    observation.receive_audited.discard("1.1")
    observation.export_audited.discard("9.3")
    problems = assess(observation).problems
    assert any("without a receive audit event: 1.1" in p for p in problems)
    assert any("without an export audit event: 9.3" in p for p in problems)


def test_a_5xx_an_unrefused_oversized_body_and_a_failed_probe_are_flagged() -> None:
    observation = _clean()
    observation.http += [
        HttpAnswer(Fault.DISK_FULL, "STOW-RS of a study", 500),
        HttpAnswer(Fault.OVERSIZED, "STOW-RS, 600 MiB declared", 200, True),
        HttpAnswer(Fault.OVERSIZED, "login, JSON streamed past the limit", None, True),
    ]
    observation.probes.append(Probe(Fault.IDLE_FLOOD, "C-STORE during the flood", False, "x"))
    verdict = assess(observation)
    assert _row(verdict.rows, Fault.DISK_FULL.value).http_5xx == 1
    assert verdict.problems == [
        "STOW-RS of a study (disk full): HTTP 500",
        "STOW-RS, 600 MiB declared (oversized bodies): HTTP 200, expected 4xx",
        "login, JSON streamed past the limit (oversized bodies): no answer, expected 4xx",
        "C-STORE during the flood (idle-socket flood) failed: x",
    ]


def test_unreachable_peers_are_one_error_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(ServiceError, match=r"^PostgreSQL not reachable") as raised:
        check_peers(ChaosOptions(postgres_url=f"postgresql+psycopg://x@127.0.0.1:{closed}/x"))
    assert "\n" not in str(raised.value)
    check_peers(ChaosOptions(backends=(Backend.SQLITE,), postgres_url="postgresql://nowhere:1/x"))


def test_cli_refuses_an_unknown_backend(run_cli: RunCli) -> None:
    status, _out, err = run_cli("bench", "chaos", "--backend", "oracle")
    assert status == 2
    assert err.strip() == "error: --backend 'oracle': expected sqlite, postgres or both"


def _consistent(backend: dict[str, object]) -> None:
    rows = [FaultRow(**row) for row in backend["rows"]]  # type: ignore[attr-defined]
    total = rows[-1]
    assert total.fault == "all" and [r.fault for r in rows[:-1]] == [f.value for f in Fault]
    for name, value in asdict(total).items():
        if name != "fault":
            assert value == sum(getattr(r, name) for r in rows[:-1]), name
    assert total.sent == total.acknowledged + total.unacknowledged > 0
    assert total.lost == 0 and total.stored >= total.acknowledged
    assert total.receive_audited == total.stored
    assert total.studies_delivered == total.studies_acknowledged > 0
    assert total.export_audited == total.reports_delivered >= total.studies_delivered
    assert total.conflicting_duplicates == 0 and total.http_5xx == 0
    # Every fault was really applied: something was refused while the service was
    # killed or the disk full, and every oversized body got its 4xx.
    by_fault = {r.fault: r for r in rows}
    assert by_fault[Fault.DISK_FULL.value].unacknowledged > 0
    assert by_fault[Fault.NONE.value].acknowledged > 0
    oversized = [a for a in backend["http"] if a["expected_4xx"]]  # type: ignore[attr-defined]
    assert oversized and all(400 <= a["status"] < 500 for a in oversized)


needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("storescp") is None,
    reason="DCMTK (storescu/storescp) not installed",
)


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_a_short_chaos_run_on_sqlite_passes() -> None:
    options = ChaosOptions(
        backends=(Backend.SQLITE,),
        duration_s=40,
        settle_s=150,
        pacs_down_s=8,
        disk_full_s=4,
        idle_sockets=40,
        kills=2,
        seed=1,
    )
    result = benchmark_chaos(options)
    [backend] = result["backends"]
    assert backend["passed"], backend["problems"]
    assert result["passed"]
    _consistent(backend)
    assert any(e.split("s  ", 1)[1].startswith("kill -9 serve") for e in backend["events"])


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_a_short_chaos_run_on_postgres_with_celery_workers_passes() -> None:
    options = ChaosOptions(
        backends=(Backend.POSTGRES,),
        duration_s=40,
        settle_s=150,
        pacs_down_s=8,
        disk_full_s=4,
        idle_sockets=40,
        kills=2,
        seed=1,
    )
    try:
        check_peers(options)
    except ServiceError as exc:
        pytest.skip(str(exc))
    result = benchmark_chaos(options)
    [backend] = result["backends"]
    assert backend["passed"], backend["problems"]
    _consistent(backend)
