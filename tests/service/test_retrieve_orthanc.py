"""Query/retrieve against Orthanc as the PACS: C-FIND priors, C-MOVE and C-GET them in."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from overread.gateway import Gateway
from overread.service.config import QueryPeer
from overread.service.db import Instance
from overread.service.retrieve import (
    QueryRetrieveError,
    RetrieveMethod,
    find_studies,
    get_study,
    move_study,
    prior_studies,
)

from .conftest import free_port, needs_dcmtk
from .test_orthanc import Orthanc

pytestmark = [pytest.mark.service, needs_dcmtk]

CURRENT = "1.2.826.0.1.3680043.10.9.1"
PRIOR = "1.2.826.0.1.3680043.10.9.2"
OLDER = "1.2.826.0.1.3680043.10.9.3"
ELSEWHERE = "1.2.826.0.1.3680043.10.9.4"


@dataclass
class Site:
    """Orthanc holding a patient's studies, and a running gateway it knows as OVERREAD."""

    pacs: Orthanc
    peer: QueryPeer
    gateway: Gateway
    sop_uids: dict[str, str]


def _upload(pacs: Orthanc, path: Path) -> None:
    answer = httpx.post(f"{pacs.url}/instances", content=path.read_bytes(), timeout=30)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def site(
    tmp_path: Path, make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> Iterator[Site]:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed")
    gateway = make_service()
    pacs = Orthanc(tmp_path, gateway.dicom_port or 0, free_port())
    sop_uids: dict[str, str] = {}
    studies = [
        (CURRENT, "20260101", "SVC001"),
        (PRIOR, "20250301", "SVC001"),
        (OLDER, "20230715", "SVC001"),
        (ELSEWHERE, "20250301", "OTHER9"),
    ]
    for uid, study_date, patient in studies:
        path = dx_factory(study_uid=uid, patient_id=patient)
        dataset = dcmread(path)
        dataset.StudyDate = study_date
        dataset.save_as(path)
        sop_uids[uid] = str(dataset.SOPInstanceUID)
        _upload(pacs, path)
    peer = QueryPeer(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=pacs.dicom_port)
    try:
        yield Site(pacs, peer, gateway, sop_uids)
    finally:
        pacs.stop()


def _stored(gateway: Gateway, study: str) -> list[str]:
    with gateway.database.session() as session:
        return list(
            session.scalars(
                select(Instance.sop_instance_uid).where(Instance.study_instance_uid == study)
            ).all()
        )


def test_c_find_on_orthanc_gives_typed_study_records(site: Site) -> None:
    found = find_studies(site.peer, PatientID="SVC001")
    assert sorted(s.study_instance_uid for s in found) == sorted([CURRENT, PRIOR, OLDER])
    prior = next(s for s in found if s.study_instance_uid == PRIOR)
    assert prior.study_date == date(2025, 3, 1)
    assert prior.patient_name == "Service^Test"
    assert prior.accession_number == "ACC1"
    assert prior.modalities == ("DX",)
    assert prior.number_of_instances == 1
    assert prior.source == "pacs"
    assert find_studies(site.peer, PatientID="NOBODY") == []
    assert [s.study_instance_uid for s in find_studies(site.peer, StudyDate="-20240101")] == [OLDER]


def test_prior_studies_are_the_patients_earlier_studies_newest_first(site: Site) -> None:
    down = QueryPeer(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    found = prior_studies("SVC001", before=date(2026, 1, 1), peers=[site.peer, down])
    assert [s.study_instance_uid for s in found.studies] == [PRIOR, OLDER]
    assert [f.peer for f in found.failures] == ["down"]
    assert "DOWN@127.0.0.1" in found.failures[0].reason
    assert "could not be reached" in found.failures[0].reason
    # From the configured query peers, calling as the gateway's own AE title.
    configured = site.gateway.config.model_copy(update={"query_peers": [site.peer]})
    earlier = prior_studies("SVC001", before=date(2025, 3, 1), config=configured)
    assert [s.study_instance_uid for s in earlier.studies] == [OLDER]
    assert earlier.failures == ()


def test_a_prior_is_pulled_by_c_move_from_orthanc_into_the_gateway(site: Site) -> None:
    outcome = move_study(site.peer, PRIOR, "OVERREAD")
    assert outcome.method is RetrieveMethod.MOVE
    assert (outcome.completed, outcome.failed) == (1, 0)
    # The final C-MOVE response follows the sub-operation, acknowledged after the commit.
    assert _stored(site.gateway, PRIOR) == [site.sop_uids[PRIOR]]
    with site.gateway.database.session() as session:
        assert session.scalars(select(Instance.calling_ae)).all() == ["ORTHANC"]


def test_c_move_failures_become_one_clear_error(site: Site) -> None:
    # Orthanc 1.10 answers a destination it does not know with 0xC000.
    with pytest.raises(
        QueryRetrieveError, match=rf"C-MOVE of study {PRIOR} .* to NOWHERE failed: status 0x"
    ):
        move_study(site.peer, PRIOR, "NOWHERE")
    refused = QueryPeer(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=free_port())
    with pytest.raises(QueryRetrieveError, match=r"could not be reached"):
        move_study(refused, PRIOR, "OVERREAD", timeout=5)


def test_c_get_brings_the_study_on_our_association(site: Site) -> None:
    received: list[bytes] = []
    outcome = get_study(site.peer, OLDER, received.append)
    assert (outcome.completed, outcome.failed) == (1, 0)
    (data,) = received
    from io import BytesIO

    assert str(dcmread(BytesIO(data)).SOPInstanceUID) == site.sop_uids[OLDER]


def _fetch(run_cli: Callable[..., Any], site: Site, *args: str) -> tuple[int, str, str]:
    status, out, err = run_cli(
        "fetch",
        "--from",
        f"ORTHANC@127.0.0.1:{site.pacs.dicom_port}",
        "--data-dir",
        str(site.gateway.config.data_dir),
        "--gateway",
        f"OVERREAD@127.0.0.1:{site.gateway.dicom_port}",
        *args,
    )
    return int(status), str(out), str(err)


def test_fetch_command_pulls_a_study_and_its_priors(
    site: Site, run_cli: Callable[..., Any]
) -> None:
    status, out, err = _fetch(run_cli, site, "--study", CURRENT)
    assert status == 0, err
    assert f"study {CURRENT} from ORTHANC@127.0.0.1:{site.pacs.dicom_port} by C-MOVE" in out
    assert "1 completed, 0 failed, 0 warning; 1 instance(s) in 1 series (DX) stored" in out
    assert _stored(site.gateway, CURRENT) == [site.sop_uids[CURRENT]]

    status, out, err = _fetch(run_cli, site, "--study", CURRENT, "--priors", "--method", "get")
    assert status == 0, err
    assert f"study {PRIOR} " in out and f"study {OLDER} " in out and "by C-GET" in out
    assert "3/3 study(ies) fetched into OVERREAD" in out
    assert _stored(site.gateway, OLDER) == [site.sop_uids[OLDER]]
    assert _stored(site.gateway, ELSEWHERE) == []


def test_fetch_command_reports_a_refused_move_in_one_line(
    site: Site, run_cli: Callable[..., Any]
) -> None:
    status, out, err = _fetch(run_cli, site, "--study", PRIOR, "--ae-title", "NOWHERE")
    assert status == 1
    # Orthanc drops a C-MOVE from a calling AE title it does not know: one line says so.
    (line,) = err.strip().splitlines()
    assert line.startswith(
        f"error: C-MOVE of study {PRIOR} from ORTHANC@127.0.0.1:{site.pacs.dicom_port} to NOWHERE"
    )
    assert "0/1 study(ies) fetched" in out
    status, out, err = _fetch(run_cli, site, "--study", PRIOR, "--method", "fax")
    assert status == 2 and err.startswith("error: --method 'fax'")
