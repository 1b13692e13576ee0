"""Shadow, canary with automatic rollback, and the kill switch, end to end: DCMTK
storescu -> gateway -> models -> DCMTK storescp, the rollout state in the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent
from overread.gateway import Gateway
from overread.harness import storescu
from overread.models.package import derive_package
from overread.models.registry import Registry
from overread.service.db import Job, Result
from overread.service.rollout import (
    CanaryBounds,
    ModelRollouts,
    RolloutResult,
    RolloutState,
    in_canary,
)
from overread.service.rollout_compare import compare_rollout
from overread.service.runtime import RegistryPipelineProvider
from overread.triage.schema import WorklistItem

from .conftest import Storescp, api_token, bearer, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pytest.importorskip("overread.service.outputs", reason="the result builders are not importable")

ACTIVE = "cxr-default@1.5.3"
GOOD = "cxr-default@1.5.4"
BAD = "cxr-default@1.5.5"
ROUTES = [{"name": "chest", "modality": ["DX"], "models": ["chest"], "complete_on_release": True}]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry with the bundled version active behind alias ``chest``, a faithful
    copy (1.5.4) and a bad one (1.5.5) whose thresholds call every finding positive."""
    registry = Registry(tmp_path / "registry")
    bundled = registry.load("cxr-default@1.5.3")
    good = derive_package(bundled, tmp_path / "packages" / "good", version="1.5.4")
    everything = {
        label: dict.fromkeys(points, 0.0)
        for label, points in bundled.manifest.operating_points.items()
    }
    bad = derive_package(
        bundled, tmp_path / "packages" / "bad", version="1.5.5", operating_points=everything
    )
    registry.import_package(good.path)
    registry.import_package(bad.path)
    registry.set_alias("chest", ACTIVE)
    yield registry


def _start(make_service: Callable[..., Gateway], registry: Registry, pacs: Storescp) -> Gateway:
    return make_service(
        routes=ROUTES,
        destinations=[f"PACS=PACSAE@127.0.0.1:{pacs.port}"],
        service_options={
            "registry": registry,
            "models": RegistryPipelineProvider(registry=registry),
        },
    )


def _jobs(service: Gateway) -> list[Job]:
    with service.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def _settled(service: Gateway, count: int) -> Callable[[], bool]:
    def check() -> bool:
        jobs = _jobs(service)
        return len(jobs) == count and all(
            j.state in ("succeeded", "dead_lettered", "held", "cancelled") for j in jobs
        )

    return check


def _rolled_back(rollouts: ModelRollouts) -> Callable[[], bool]:
    def check() -> bool:
        rollout = rollouts.store.current("chest")
        return rollout is not None and rollout.state is RolloutState.ROLLED_BACK

    return check


def _send(service: Gateway, dx_factory: Callable[..., Path], study_uid: str) -> Path:
    image = dx_factory(study_uid=study_uid, size=256)
    storescu(service.dicom_port or 0, [image])
    return image


def _uids(canary: bool, n: int, share: float) -> list[str]:
    """``n`` new Study Instance UIDs inside (or outside) a canary of ``share``."""
    found: list[str] = []
    while len(found) < n:
        uid = generate_uid()
        if in_canary(uid, share) == canary:
            found.append(uid)
    return found


def _events(service: Gateway, action: AuditAction) -> list[dict[str, Any]]:
    with service.database.session() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)).all()
        return [dict(r.details or {}) for r in rows]


def test_shadow_results_are_stored_never_sent_nor_listed(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    registry: Registry,
) -> None:
    service = _start(make_service, registry, storescp)
    rollouts = ModelRollouts(registry, service.database)
    rollout = rollouts.start("chest", GOOD, RolloutState.SHADOW, actor="tests")
    assert (rollout.active_ref, rollout.candidate_ref) == (ACTIVE, GOOD)
    studies = [generate_uid(), generate_uid()]
    for n, uid in enumerate(studies):
        _send(service, dx_factory, uid)
        # Per study: the active's infer and export, the shadow's infer.
        wait_until(_settled(service, 3 * (n + 1)))
    jobs = _jobs(service)
    assert all(j.state == "succeeded" for j in jobs)
    assert sorted((j.kind, j.model_version) for j in jobs) == sorted(
        [("infer", "1.5.3"), ("export", "1.5.3"), ("infer", "1.5.4")] * 2
    )
    # Only the active's SRs reached the PACS.
    sent = [pydicom.dcmread(f) for f in storescp.files()]
    assert len(sent) == 2
    assert {str(ds.StudyInstanceUID) for ds in sent} == set(studies)
    with service.database.session() as session:
        results = {r.id: r for r in session.scalars(select(Result)).all()}
        roles = {m.result_id: m.role for m in session.scalars(select(RolloutResult)).all()}
        worklist = session.scalars(select(WorklistItem)).all()
        assert sorted(roles.values()) == ["active", "active", "shadow", "shadow"]
        for result_id, role in roles.items():
            version = results[result_id].model_version
            assert version == ("1.5.4" if role == "shadow" else "1.5.3")
            if role == "shadow":
                assert results[result_id].artifacts == []
        # The worklist shows the active's reading of each study, never the shadow's.
        assert sorted(w.study_instance_uid for w in worklist) == sorted(studies)
        assert {w.model_version for w in worklist} == {"1.5.3"}
    # Nor does the REST API show a study's shadow reading.
    auth = bearer(api_token(service, "radiologist"))
    base = f"http://127.0.0.1:{service.http_port}/api/studies/{studies[0]}"
    listed = httpx.get(f"{base}/results", headers=auth, timeout=10).json()
    assert [(r["model_name"], r["model_version"]) for r in listed] == [("cxr-default", "1.5.3")]
    inference = _events(service, AuditAction.INFERENCE)
    assert sorted(d.get("rollout", "") for d in inference) == [
        "active",
        "active",
        "shadow",
        "shadow",
    ]
    [started] = _events(service, AuditAction.ROLLOUT_START)
    assert started["state"] == "shadow" and started["candidate"] == GOOD

    # The comparison pairs the two readings of each study: the same network and
    # thresholds agree on every decision.
    current = rollouts.store.current("chest")
    assert current is not None
    report = compare_rollout(service.database, current)
    assert report.paired_studies == 2
    assert report.decision_agreement == 1.0
    assert all(label.mcnemar_p == 1.0 for label in report.labels)

    # A manual rollback ends the shadow; the next study runs the active version only.
    assert rollouts.rollback("chest", actor="tests") == ACTIVE
    _send(service, dx_factory, generate_uid())
    wait_until(_settled(service, 8))
    assert [j.model_version for j in _jobs(service)[6:]] == ["1.5.3", "1.5.3"]
    [ended] = _events(service, AuditAction.ROLLOUT_ROLLBACK)
    assert ended["state"] == "rolled-back" and ended["actor"] == "tests"


def test_canary_split_is_by_study_uid_and_a_bad_candidate_is_rolled_back(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    registry: Registry,
) -> None:
    service = _start(make_service, registry, storescp)
    rollouts = ModelRollouts(registry, service.database)
    share = 0.5
    # The active version's reference: three studies before the canary.
    before = [generate_uid() for _ in range(3)]
    for n, uid in enumerate(before):
        _send(service, dx_factory, uid)
        wait_until(_settled(service, 2 * (n + 1)))
    bounds = CanaryBounds(min_studies=3)
    rollouts.start(
        "chest", BAD, RolloutState.CANARY, actor="tests", canary_share=share, bounds=bounds
    )
    # Studies alternate between the two sides of the split; the bad candidate's
    # third study leaves the positive-rate bound.
    inside, outside = _uids(True, 4, share), _uids(False, 3, share)
    order = [inside[0], outside[0], inside[1], outside[1], inside[2]]
    for n, uid in enumerate(order[:-1]):
        _send(service, dx_factory, uid)
        wait_until(_settled(service, 6 + 2 * (n + 1)))
    # The worker judges the canary right after the job it finished: the study that
    # tipped it over was read by the candidate, but that result is not sent; the
    # study is read again by the active version (its infer and export jobs).
    _send(service, dx_factory, order[-1])
    wait_until(_rolled_back(rollouts))
    wait_until(_settled(service, 18))
    last = [j for j in _jobs(service) if j.study_instance_uid == order[-1]]
    assert [(j.kind, j.model_version, j.state) for j in last] == [
        ("infer", "1.5.5", "succeeded"),
        ("export", "1.5.5", "cancelled"),
        ("infer", "1.5.3", "succeeded"),
        ("export", "1.5.3", "succeeded"),
    ]
    [skipped] = [
        e for e in _events(service, AuditAction.ROLLOUT_REROUTE) if "skipped_export_job" in e
    ]
    assert skipped["candidate"] == BAD and skipped["skipped_export_job"] == last[1].id
    rollout = rollouts.store.current("chest")
    assert rollout is not None and rollout.state is RolloutState.ROLLED_BACK
    assert rollout.reason.startswith("automatic: positive-finding rate 1.00")
    # The split followed the hash of each Study Instance UID.
    with service.database.session() as session:
        versions = {
            r.study_instance_uid: r.model_version
            for r in session.scalars(select(Result).order_by(Result.id.desc())).all()
        }  # each study's first result
    for uid in order:
        assert versions[uid] == ("1.5.5" if in_canary(uid, share) else "1.5.3"), uid
    # The canary's results went out as the active's do, but for the one that finished
    # after the rollback (the active's went instead): one SR per study.
    assert len(storescp.files()) == 8
    sent = {str(pydicom.dcmread(p).StudyInstanceUID) for p in storescp.files()}
    assert sent == {*before, *order}
    [rolled] = _events(service, AuditAction.ROLLOUT_ROLLBACK)
    assert rolled["actor"] == "rollout-monitor"
    assert rolled["evidence"]["automatic"] is True
    assert rolled["evidence"]["candidate"]["positive_rate"] == 1.0
    assert rolled["evidence"]["active"]["positive_rate"] < 0.75
    # After the rollback a study in the canary's share is read by the active version.
    _send(service, dx_factory, inside[3])
    wait_until(_settled(service, 20))
    with service.database.session() as session:
        [late] = session.scalars(select(Result).where(Result.study_instance_uid == inside[3])).all()
    assert late.model_version == "1.5.3"
    # The registry's alias never moved.
    assert registry.aliases()["chest"] == ACTIVE


def test_kill_switch_holds_exports_until_released(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    registry: Registry,
) -> None:
    service = _start(make_service, registry, storescp)
    rollouts = ModelRollouts(registry, service.database)
    assert rollouts.store.kill("cxr-default", actor="tests", reason="recall") is True
    _send(service, dx_factory, generate_uid())
    wait_until(_settled(service, 2))
    assert [j.state for j in _jobs(service)] == ["succeeded", "held"]
    assert storescp.files() == []
    assert rollouts.store.release("cxr-default", actor="tests") == 1
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    assert len(storescp.files()) == 1
    switches = _events(service, AuditAction.KILL_SWITCH)
    assert [(d["engaged"], d["model"]) for d in switches] == [
        (True, "cxr-default"),
        (False, "cxr-default"),
    ]
    assert switches[1]["released_exports"] == 1


def test_rollouts_and_kill_switches_over_rest_need_the_admin_role(
    make_service: Callable[..., Gateway], registry: Registry
) -> None:
    service = make_service(workers=0, routes=ROUTES, service_options={"registry": registry})
    base = f"http://127.0.0.1:{service.http_port}/api"
    admin, radiologist = (
        bearer(api_token(service, "admin")),
        bearer(api_token(service, "radiologist")),
    )
    switch = f"{base}/kill-switches/cxr-default@1.5.3"
    assert httpx.put(switch, json={"reason": "x"}, timeout=10).status_code == 401
    assert (
        httpx.put(switch, json={"reason": "x"}, headers=radiologist, timeout=10).status_code == 403
    )
    engaged = httpx.put(switch, json={"reason": "recall"}, headers=admin, timeout=10)
    assert engaged.status_code == 200 and engaged.json()["changed"] is True
    listed = httpx.get(f"{base}/kill-switches", headers=radiologist, timeout=10).json()
    assert [k["model"] for k in listed["kill_switches"]] == ["cxr-default@1.5.3"]
    released = httpx.delete(switch, headers=admin, timeout=10)
    assert released.status_code == 200 and released.json()["released_exports"] == 0
    assert httpx.delete(switch, headers=admin, timeout=10).status_code == 404

    body = {"target": BAD, "state": "canary", "canary_share": 0.1, "bounds": {"min_studies": 3}}
    rollout = f"{base}/rollouts/chest"
    assert httpx.put(rollout, json=body, headers=radiologist, timeout=10).status_code == 403
    started = httpx.put(rollout, json=body, headers=admin, timeout=10)
    assert started.status_code == 200, started.text
    assert started.json()["canary_share"] == 0.1 and started.json()["bounds"]["min_studies"] == 3
    bad_share = {**body, "canary_share": 0.0}
    assert httpx.put(rollout, json=bad_share, headers=admin, timeout=10).status_code == 422
    [listed_rollout] = httpx.get(f"{base}/rollouts", headers=radiologist, timeout=10).json()[
        "rollouts"
    ]
    assert listed_rollout["state"] == "canary" and listed_rollout["figures"]["breaches"] == []
    back = httpx.post(f"{base}/models/aliases/chest/rollback", headers=admin, timeout=10)
    assert back.status_code == 200 and back.json()["target"] == ACTIVE
    assert registry.aliases()["chest"] == ACTIVE
    actors = {d.get("reason"): d for d in _events(service, AuditAction.ROLLOUT_ROLLBACK)}
    assert actors["by hand (REST)"]["actor"].startswith("admin-")

    # Promotion (no test cohort registered: no gate to pass) ends a shadow.
    shadow = {"target": GOOD, "state": "shadow"}
    assert httpx.put(rollout, json=shadow, headers=admin, timeout=10).status_code == 200
    promote = f"{rollout}/promote"
    assert httpx.post(promote, json={}, headers=radiologist, timeout=10).status_code == 403
    promoted = httpx.post(promote, json={}, headers=admin, timeout=10)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {
        "alias": "chest",
        "target": GOOD,
        "promoted": True,
        "gate": None,
        "gate_skipped": False,
    }
    assert registry.aliases()["chest"] == GOOD
    assert httpx.post(promote, json={}, headers=admin, timeout=10).status_code == 422
    [done] = _events(service, AuditAction.ROLLOUT_PROMOTE)
    assert done["state"] == "promoted" and done["candidate"] == GOOD


def test_a_canary_that_fails_is_rolled_back_on_its_failure_rate(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    registry: Registry,
) -> None:
    service = _start(make_service, registry, storescp)
    # Started through another registry object: the gateway's has not loaded 1.5.4.
    rollouts = ModelRollouts(Registry(registry.root), service.database)
    bounds = CanaryBounds(min_studies=2)
    rollouts.start(
        "chest", GOOD, RolloutState.CANARY, actor="tests", canary_share=0.5, bounds=bounds
    )
    # Then its weights are damaged on disk: it no longer verifies, every job fails.
    for name in ("model.onnx", "model.int8.onnx", "model.pt"):
        weights = registry.root / "cxr-default" / "1.5.4" / name
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    inside = _uids(True, 3, 0.5)
    for n, uid in enumerate(inside[:2]):
        _send(service, dx_factory, uid)
        # The candidate fails for good; the study is read (and sent) by the active
        # version instead, so it is not left without a result.
        wait_until(_settled(service, 3 * (n + 1)))
    jobs = [(j.study_instance_uid, j.kind, j.model_version, j.state) for j in _jobs(service)]
    for uid in inside[:2]:
        assert sorted(j[1:] for j in jobs if j[0] == uid) == [
            ("export", "1.5.3", "succeeded"),
            ("infer", "1.5.3", "succeeded"),
            ("infer", "1.5.4", "dead_lettered"),
        ]
    wait_until(_rolled_back(rollouts))
    rollout = rollouts.store.current("chest")
    assert rollout is not None and rollout.state is RolloutState.ROLLED_BACK
    assert rollout.reason == "automatic: failure rate 1.00 > 0.20"
    # The next study of the canary's share is read (and sent) by the active version.
    _send(service, dx_factory, inside[2])
    wait_until(_settled(service, 8))
    assert [(j.kind, j.model_version, j.state) for j in _jobs(service)[6:]] == [
        ("infer", "1.5.3", "succeeded"),
        ("export", "1.5.3", "succeeded"),
    ]
    assert len(storescp.files()) == 3
