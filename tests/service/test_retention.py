"""Retention: the dry run lists exactly what the run deletes, audited, sparing what is
still needed (shared files, studies with pending jobs, the audit trail)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update

from overread.audit import AuditAction, verify_chain
from overread.audit.schema import AuditEvent
from overread.config import Settings
from overread.errors import ConfigError
from overread.service.config import service_config
from overread.service.db import (
    Database,
    Instance,
    Job,
    JobKind,
    JobState,
    Result,
    Study,
    StudyState,
    utcnow,
)
from overread.service.ingest import Ingestor
from overread.service.jobs import JobQueue
from overread.service.retention import DataClass, SkipReason, plan_retention, run_retention
from overread.service.retention_settings import RetentionSettings
from overread.service.store import ObjectStore

NOW = utcnow()
MODEL = {"model_name": "cxr-default", "model_version": "1.0.0"}


@dataclass
class Site:
    database: Database
    store: ObjectStore
    ingestor: Ingestor
    queue: JobQueue


def _open(database_url: str, objects: Path) -> Site:
    database = Database(database_url)
    store = ObjectStore(objects, fsync=False)
    return Site(database, store, Ingestor(database, store), JobQueue(database))


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Site:
    return _open(database_url, tmp_path / "data" / "objects")


def _study(site: Site, dx_factory: Callable[..., Path], days_old: float, images: int = 2) -> str:
    """A routed study of ``images`` instances whose last one arrived ``days_old`` ago."""
    uid = generate_uid()
    for _ in range(images):
        site.ingestor.ingest_file(dx_factory(study_uid=uid), calling_ae="MODALITY")
    moment = NOW - timedelta(days=days_old)
    with site.database.session() as session:
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == uid)
            .values(
                state=StudyState.ROUTED.value, first_instance_at=moment, last_instance_at=moment
            )
        )
        session.execute(
            update(Instance).where(Instance.study_instance_uid == uid).values(received_at=moment)
        )
    return uid


def _job(site: Site, uid: str, state: JobState, days_old: float, destination: str = "") -> int:
    kind = JobKind.EXPORT if destination else JobKind.INFER
    job_id, created = site.queue.enqueue(
        study_instance_uid=uid, kind=kind, destination=destination, **MODEL
    )
    assert created
    moment = NOW - timedelta(days=days_old)
    with site.database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=state.value, finished_at=moment, updated_at=moment)
        )
    return job_id


def _result(site: Site, uid: str, days_old: float, artifact: bytes) -> str:
    stored = site.store.put(artifact)
    with site.database.session() as session:
        session.add(
            Result(
                job_id=0,
                study_instance_uid=uid,
                summary={"instances": [], "sop_instance_uids": []},
                artifacts=[{"key": stored.key, "sop_instance_uid": generate_uid()}],
                created_at=NOW - timedelta(days=days_old),
                **MODEL,
            )
        )
    return stored.key


def _keys(site: Site, uid: str) -> list[str]:
    with site.database.session() as session:
        return list(
            session.scalars(
                select(Instance.object_key).where(Instance.study_instance_uid == uid)
            ).all()
        )


def _count(site: Site, table: Any, uid: str) -> int:
    with site.database.session() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(table).where(table.study_instance_uid == uid)
            )
            or 0
        )


def _events(database: Database) -> list[AuditEvent]:
    with database.session() as session:
        events = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == AuditAction.RETENTION_DELETE.value)
                .order_by(AuditEvent.seq)
            ).all()
        )
        session.expunge_all()
    return events


def _snapshot(site: Site) -> tuple[int, int, int, list[Path]]:
    with site.database.session() as session:
        counts = tuple(
            int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (Instance, Result, Job)
        )
    files = sorted(p for p in site.store.root.rglob("*") if p.is_file())
    return counts[0], counts[1], counts[2], files


def test_dry_run_lists_exactly_what_the_run_deletes(
    site: Site, dx_factory: Callable[..., Path]
) -> None:
    old = _study(site, dx_factory, days_old=40)
    recent = _study(site, dx_factory, days_old=5)
    pending = _study(site, dx_factory, days_old=40)
    shared = _study(site, dx_factory, days_old=40, images=1)
    _job(site, old, JobState.SUCCEEDED, days_old=40)
    _job(site, old, JobState.DEAD_LETTERED, days_old=40, destination="PACS")
    recent_job = _job(site, recent, JobState.SUCCEEDED, days_old=5)
    _job(site, pending, JobState.QUEUED, days_old=40)
    old_artifact = _result(site, old, days_old=40, artifact=b"an old SR")
    recent_artifact = _result(site, recent, days_old=5, artifact=b"a recent SR")
    # The recent study's row references the same stored file as the old study that
    # goes: the content-addressed store keeps one copy for both.
    (shared_key,) = _keys(site, shared)
    with site.database.session() as session:
        template = session.scalar(select(Instance).where(Instance.study_instance_uid == recent))
        assert template is not None
        session.add(
            Instance(
                sop_instance_uid=generate_uid(),
                study_instance_uid=recent,
                series_instance_uid=template.series_instance_uid,
                sop_class_uid=template.sop_class_uid,
                calling_ae="MODALITY",
                object_key=shared_key,
                sha256=shared_key.replace("/", ""),
                size=site.store.path(shared_key).stat().st_size,
                received_at=NOW - timedelta(days=5),
            )
        )
    settings = RetentionSettings(images_days=30, results_days=30, jobs_days=30)
    before = _snapshot(site)
    old_keys = _keys(site, old)
    old_bytes = sum(site.store.path(k).stat().st_size for k in old_keys)
    shared_bytes = site.store.path(shared_key).stat().st_size

    dry = run_retention(site.database, site.store, settings, dry_run=True, now=NOW)

    assert _snapshot(site) == before and _events(site.database) == []
    totals = dry.plan.totals()
    assert totals[DataClass.IMAGES].studies == tuple(sorted([old, shared]))
    assert totals[DataClass.IMAGES].count == 3
    assert totals[DataClass.IMAGES].bytes == old_bytes + shared_bytes
    assert totals[DataClass.RESULTS].studies == (old,) and totals[DataClass.RESULTS].count == 1
    assert totals[DataClass.RESULTS].bytes == len(b"an old SR")
    assert totals[DataClass.JOBS].studies == (old,) and totals[DataClass.JOBS].count == 2
    assert [(s.study_instance_uid, s.reason) for s in dry.plan.skipped] == [
        (pending, SkipReason.PENDING_JOB)
    ]
    assert set(dry.plan.objects) == {*old_keys, old_artifact}
    assert dry.plan.shared_objects == 1
    listed = dry.to_dict()
    assert listed["dry_run"] is True and listed["audit_events"] == 0
    assert listed["objects"] == {
        "count": 3,
        "bytes": old_bytes + len(b"an old SR"),
        "shared_kept": 1,
    }

    done = run_retention(site.database, site.store, settings, now=NOW)

    assert sorted(done.applied) == sorted([old, shared])
    assert done.removed_objects == 3 and done.removed_bytes == old_bytes + len(b"an old SR")
    # Exactly the planned rows and files are gone; the rest is untouched.
    assert _count(site, Instance, old) == 0 and _count(site, Instance, shared) == 0
    assert _count(site, Result, old) == 0 and _count(site, Job, old) == 0
    assert _count(site, Instance, recent) == 3 and _count(site, Result, recent) == 1
    assert _count(site, Instance, pending) == 2 and _count(site, Job, pending) == 1
    with site.database.session() as session:
        assert session.get(Job, recent_job) is not None
    for key in [*old_keys, old_artifact]:
        assert not site.store.exists(key)
    for key in [*_keys(site, recent), *_keys(site, pending), recent_artifact]:
        assert site.store.exists(key)
    assert site.store.exists(shared_key)  # still referenced by the recent study
    # The study rows stay and say when their images went.
    with site.database.session() as session:
        rows = {s.study_instance_uid: s for s in session.scalars(select(Study)).all()}
        session.expunge_all()
    assert rows[old].images_purged_at is not None and rows[old].results_purged_at is not None
    assert rows[shared].images_purged_at is not None and rows[shared].results_purged_at is None
    assert rows[recent].images_purged_at is None and rows[pending].images_purged_at is None
    # One audit event per study, naming the policy, classes, counts and bytes.
    events = _events(site.database)
    assert sorted(e.object_uids[0] for e in events) == sorted([old, shared])
    details = {e.object_uids[0]: e.details for e in events}
    assert details[old]["policy"] == "service.retention"
    assert details[old]["classes"] == [
        {"class": "images", "days": 30, "count": 2, "bytes": old_bytes},
        {"class": "results", "days": 30, "count": 1, "bytes": len(b"an old SR")},
        {"class": "jobs", "days": 30, "count": 2, "bytes": 0},
    ]
    assert details[shared]["classes"] == [
        {"class": "images", "days": 30, "count": 1, "bytes": shared_bytes}
    ]
    assert all(e.actor == "system:retention" for e in events)
    assert verify_chain(site.database.engine).ok
    # A second run finds nothing more to do.
    again = run_retention(site.database, site.store, settings, now=NOW)
    assert again.plan.empty and len(_events(site.database)) == 2


def test_each_class_follows_its_own_period(site: Site, dx_factory: Callable[..., Path]) -> None:
    uid = _study(site, dx_factory, days_old=100)
    _job(site, uid, JobState.SUCCEEDED, days_old=100)
    _result(site, uid, days_old=100, artifact=b"SR")
    keys = _keys(site, uid)

    only_results = run_retention(
        site.database, site.store, RetentionSettings(results_days=90), now=NOW
    )

    assert only_results.applied == (uid,)
    assert _count(site, Result, uid) == 0
    assert _count(site, Instance, uid) == 2 and _count(site, Job, uid) == 1
    assert all(site.store.exists(k) for k in keys)
    # Not yet due under a longer period; nothing at all with the default (keep forever).
    assert run_retention(
        site.database, site.store, RetentionSettings(images_days=365), now=NOW
    ).plan.empty
    assert run_retention(site.database, site.store, RetentionSettings(), now=NOW).plan.empty
    assert _count(site, Instance, uid) == 2


@pytest.mark.parametrize("state", [JobState.RECEIVED, JobState.RUNNING, JobState.FAILED])
def test_a_study_with_a_pending_job_keeps_its_data(
    site: Site, dx_factory: Callable[..., Path], state: JobState
) -> None:
    uid = _study(site, dx_factory, days_old=400)
    _job(site, uid, state, days_old=400, destination="PACS")
    _job(site, uid, JobState.SUCCEEDED, days_old=400)
    _result(site, uid, days_old=400, artifact=b"SR")
    settings = RetentionSettings(images_days=1, results_days=1, jobs_days=1)

    report = run_retention(site.database, site.store, settings, now=NOW)

    assert report.plan.empty and report.applied == ()
    assert [s.reason for s in report.plan.skipped] == [SkipReason.PENDING_JOB]
    assert _count(site, Instance, uid) == 2 and _count(site, Result, uid) == 1
    assert _count(site, Job, uid) == 2 and all(site.store.exists(k) for k in _keys(site, uid))


def test_a_job_queued_between_plan_and_run_saves_its_study(
    site: Site, dx_factory: Callable[..., Path]
) -> None:
    from overread.service.retention import apply_retention

    uid = _study(site, dx_factory, days_old=40)
    plan = plan_retention(site.database, site.store, RetentionSettings(images_days=30), now=NOW)
    assert [s.study_instance_uid for s in plan.studies] == [uid]
    _job(site, uid, JobState.QUEUED, days_old=0)

    report = apply_retention(site.database, site.store, plan)

    assert report.applied == () and report.removed_objects == 0
    assert _count(site, Instance, uid) == 2 and all(site.store.exists(k) for k in _keys(site, uid))
    assert _events(site.database) == []


def test_a_study_still_being_assembled_is_kept(site: Site, dx_factory: Callable[..., Path]) -> None:
    uid = _study(site, dx_factory, days_old=40)
    with site.database.session() as session:
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == uid)
            .values(state=StudyState.RECEIVING.value)
        )
    report = run_retention(site.database, site.store, RetentionSettings(images_days=30), now=NOW)
    assert report.applied == ()
    assert [(s.study_instance_uid, s.reason) for s in report.plan.skipped] == [
        (uid, SkipReason.ASSEMBLING)
    ]


def test_a_study_received_again_after_its_purge_is_stored_anew(
    site: Site, dx_factory: Callable[..., Path]
) -> None:
    uid = _study(site, dx_factory, days_old=40, images=1)
    run_retention(site.database, site.store, RetentionSettings(images_days=30), now=NOW)
    outcome = site.ingestor.ingest_file(dx_factory(study_uid=uid), calling_ae="MODALITY")
    assert not outcome.duplicate and site.store.exists(outcome.object_key)
    with site.database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None and study.images_purged_at is None


def test_retention_settings_come_from_the_service_table(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, service={"retention": {"images_days": 30, "jobs_days": 90}}
    )
    config = service_config(settings)
    assert config.retention.images_days == 30 and config.retention.results_days is None
    assert config.retention.audit_min_days == 2190
    with pytest.raises(ConfigError, match="never deletes the audit trail"):
        service_config(Settings(data_dir=tmp_path, service={"retention": {"audit_days": 30}}))
    with pytest.raises(ConfigError, match=r"retention\.images_days"):
        service_config(Settings(data_dir=tmp_path, service={"retention": {"images_days": 0}}))


def test_the_cli_dry_run_and_run(
    tmp_path: Path,
    dx_factory: Callable[..., Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    data_dir = tmp_path / "site"
    config = service_config(Settings(data_dir=data_dir))
    site = _open(config.database_url, data_dir / "objects")
    old = _study(site, dx_factory, days_old=40)
    keep = _study(site, dx_factory, days_old=1)
    site.database.dispose()

    status, out, err = run_cli(
        "retention", "run", "--dry-run", "--json", "--images-days", "30", "--data-dir", data_dir
    )
    assert status == 0, err
    planned = json.loads(out)
    assert planned["dry_run"] is True
    assert planned["classes"]["images"]["studies"] == [old]
    assert planned["classes"]["images"]["count"] == 2
    assert planned["classes"]["results"]["days"] is None
    assert planned["audit"] == "never deleted"

    status, out, err = run_cli("retention", "run", "--dry-run", "--images-days", "30",
                               "--data-dir", data_dir)  # fmt: skip
    assert status == 0 and "retention dry run: nothing deleted" in out and old in out
    assert keep not in out

    status, out, err = run_cli("retention", "run", "--images-days", "30", "--data-dir", data_dir)
    assert status == 0, err
    assert "data of 1 study deleted, 1 audit event" in out
    assert _count(site, Instance, old) == 0 and _count(site, Instance, keep) == 2
    events = _events(site.database)
    assert [e.object_uids for e in events] == [[old]] and events[0].actor.startswith("os:")
    assert verify_chain(site.database.engine).ok
    site.database.dispose()

    status, _, err = run_cli("retention", "run", "--images-days", "0", "--data-dir", data_dir)
    assert status == 2 and err.startswith("error:")


def test_a_database_at_the_baseline_gains_the_purge_columns(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command

    from overread.db import SchemaState, upgrade_schema
    from overread.db.schema import alembic_config

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("studies")}
    assert "images_purged_at" not in columns
    moment = NOW - timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO studies (study_instance_uid, state, instance_count, "
                "first_instance_at, last_instance_at, complete_reason) "
                "VALUES ('1.2.3', 'routed', 4, :t, :t, 'explicit')"
            ),
            {"t": moment},
        )
    before, after = upgrade_schema(engine)
    assert before.state is SchemaState.OLDER and after.state is SchemaState.CURRENT
    columns = {c["name"] for c in sa.inspect(engine).get_columns("studies")}
    assert {"images_purged_at", "results_purged_at"} <= columns
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT study_instance_uid, state, instance_count, images_purged_at FROM studies"
            )
        ).one()
    assert tuple(row) == ("1.2.3", "routed", 4, None)
    engine.dispose()


@pytest.mark.service
def test_the_running_gateway_cleans_up_periodically(
    tmp_path: Path, dx_factory: Callable[..., Path], make_service: Callable[..., Any]
) -> None:
    from .conftest import wait_until

    config = service_config(Settings(data_dir=tmp_path / "data"))
    site = _open(config.database_url, tmp_path / "data" / "objects")
    old = _study(site, dx_factory, days_old=40)
    recent = _study(site, dx_factory, days_old=1)
    keys = _keys(site, old)
    site.database.dispose()

    service = make_service(workers=0, retention={"images_days": 30, "interval_seconds": 0.2})

    wait_until(lambda: len(_events(service.database)) == 1)
    (event,) = _events(service.database)
    assert event.actor == "system:retention" and event.object_uids == [old]
    assert not any(service.store.exists(k) for k in keys)
    with service.database.session() as session:
        left = session.scalars(select(Instance.study_instance_uid)).all()
    assert set(left) == {recent}


def test_a_study_whose_result_waits_for_review_keeps_its_data(
    site: Site, dx_factory: Callable[..., Path]
) -> None:
    from overread.service.db import ResultReview, ReviewState

    uid = _study(site, dx_factory, days_old=400)
    _job(site, uid, JobState.SUCCEEDED, days_old=400)
    _result(site, uid, days_old=400, artifact=b"a held SR")
    with site.database.session() as session:
        result_id = session.scalar(select(Result.id).where(Result.study_instance_uid == uid))
        assert result_id is not None
        session.add(
            ResultReview(
                result_id=result_id,
                study_instance_uid=uid,
                state=ReviewState.PENDING.value,
                held=True,
            )
        )
    settings = RetentionSettings(images_days=1, results_days=1, jobs_days=1)

    report = run_retention(site.database, site.store, settings, now=NOW)

    assert report.plan.empty and report.applied == ()
    assert [s.reason for s in report.plan.skipped] == [SkipReason.PENDING_REVIEW]
    assert _count(site, Instance, uid) == 2 and _count(site, Result, uid) == 1


# -- retention against an instance arriving with the same bytes ------------------------
#
# Identical bytes share one file. When retention has deleted a study's rows and the same
# instance is sent again before retention removes the file, the two must not cross:
# the instance's row would name a file removed just after. Both orders are driven
# step by step below (threads held at the point where they would cross).


def _old_image(site: Site, dx_factory: Callable[..., Path]) -> tuple[Path, str]:
    """A routed study of one image received 400 days ago: its file and its key."""
    made: list[Path] = []

    def factory(**kwargs: Any) -> Path:
        made.append(dx_factory(**kwargs))
        return made[-1]

    uid = _study(site, factory, days_old=400, images=1)
    [key] = _keys(site, uid)
    return made[0], key


def _instance_rows(site: Site, key: str) -> int:
    with site.database.session() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Instance).where(Instance.object_key == key)
            )
            or 0
        )


def test_retention_waits_for_an_arriving_instance_and_keeps_its_file(
    site: Site, dx_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    image, key = _old_image(site, dx_factory)
    in_commit, go = threading.Event(), threading.Event()
    commits = site.ingestor._commits
    write = commits._write

    def held_write(rows: Any) -> None:
        in_commit.set()  # the object is stored (found there), its row not yet committed
        assert go.wait(10)
        write(rows)

    monkeypatch.setattr(commits, "_write", held_write)
    arrival = threading.Thread(
        target=lambda: site.ingestor.ingest_file(image, calling_ae="MODALITY")
    )
    remove = site.store.remove_unreferenced
    removed: list[int | None] = []

    def crossing(object_key: str, referenced: Callable[[], bool]) -> int | None:
        # Retention has deleted the study's rows; the same instance arrives now.
        arrival.start()
        assert in_commit.wait(10)
        remover = threading.Thread(target=lambda: removed.append(remove(object_key, referenced)))
        remover.start()
        remover.join(0.5)
        assert remover.is_alive(), "retention removed a file an arriving instance is using"
        go.set()  # the instance's row is committed; retention goes on and sees it
        arrival.join(10)
        remover.join(10)
        return removed[0]

    monkeypatch.setattr(site.store, "remove_unreferenced", crossing)
    report = run_retention(site.database, site.store, RetentionSettings(images_days=30), now=NOW)
    assert report.applied and removed == [None] and report.removed_objects == 0
    assert site.store.exists(key) and _instance_rows(site, key) == 1


def test_an_instance_arriving_while_retention_removes_its_file_is_written_anew(
    site: Site, dx_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    image, key = _old_image(site, dx_factory)
    arrival = threading.Thread(
        target=lambda: site.ingestor.ingest_file(image, calling_ae="MODALITY")
    )
    remove = site.store.remove_unreferenced

    def crossing(object_key: str, referenced: Callable[[], bool]) -> int | None:
        def looked() -> bool:
            answer = referenced()  # no row: the file is about to go
            arrival.start()  # the same instance arrives between the look and the removal
            arrival.join(0.5)
            assert arrival.is_alive(), "an instance was recorded on a file being removed"
            return answer

        return remove(object_key, looked)

    monkeypatch.setattr(site.store, "remove_unreferenced", crossing)
    report = run_retention(site.database, site.store, RetentionSettings(images_days=30), now=NOW)
    arrival.join(10)
    assert report.removed_objects == 1
    # The arrival waited for the removal, then wrote its bytes again under the same key.
    assert site.store.exists(key) and _instance_rows(site, key) == 1
