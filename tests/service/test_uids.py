"""Malformed UIDs are refused at ingest (C-STORE and STOW-RS) and nothing of them is kept."""

from __future__ import annotations

import subprocess
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom import config as pydicom_config
from sqlalchemy import func, select

from overread.audit import AuditAction
from overread.audit.schema import AuditEvent
from overread.gateway import Gateway
from overread.imaging import is_valid_uid, uid_problem
from overread.service.db import Instance, Job, Study

from .conftest import api_token, bearer, needs_dcmtk

pytestmark = [
    pytest.mark.service,
    # pydicom warns when it reads the malformed values these tests send on purpose.
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length .* for VR UI:UserWarning"),
]

PASSWD = "../../../../etc/passwd"
QUOTED = "1.2.826.0.1.3680043.8.498.1'--"
LEADING_ZERO = "1.02.3"
TOO_LONG = "1." + "2" * 63  # 65 characters
BAD = [PASSWD, QUOTED, LEADING_ZERO, TOO_LONG]


def test_uid_rules() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.1.1")
    assert is_valid_uid("0.0.1") and is_valid_uid("2.25." + "9" * 59)  # 64 characters
    assert uid_problem(PASSWD) == "not only digits and dots"
    assert uid_problem(QUOTED) == "not only digits and dots"
    assert uid_problem("1.2.3 ") == "not only digits and dots"
    assert uid_problem("1.2.３") == "not only digits and dots"  # a non-ASCII digit
    assert uid_problem(LEADING_ZERO) == "leading zero in a component"
    assert uid_problem(TOO_LONG) == "longer than 64 characters"
    assert uid_problem("1..2") == uid_problem(".1.2") == uid_problem("1.2.") == "empty component"
    assert uid_problem("") == "empty"


def _with_uid(source: Path, out: Path, keyword: str, uid: str) -> Path:
    """A copy of ``source`` whose ``keyword`` is ``uid``, written as a peer would send it."""
    ds = pydicom.dcmread(source)
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setattr(ds, keyword, uid)
            if keyword == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.save_as(out)
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    return out


def _storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "-d",
            "-aet",
            "MODALITY",
            "-aec",
            "OVERREAD",
            "127.0.0.1",
            str(port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stored_files(service: Gateway) -> list[Path]:
    return [p for p in Path(service.store.root).rglob("*") if p.is_file()]


def _counts(service: Gateway) -> tuple[int, int, int]:
    with service.database.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Instance)) or 0,
            session.scalar(select(func.count()).select_from(Study)) or 0,
            session.scalar(select(func.count()).select_from(Job)) or 0,
        )


@needs_dcmtk
@pytest.mark.parametrize(
    ("keyword", "uid", "comment"),
    [
        ("StudyInstanceUID", PASSWD, "invalid StudyInstanceUID (not only digits and dots)"),
        ("StudyInstanceUID", QUOTED, "invalid StudyInstanceUID (not only digits and dots)"),
        (
            "StudyInstanceUID",
            LEADING_ZERO,
            "invalid StudyInstanceUID (leading zero in a component)",
        ),
        ("StudyInstanceUID", TOO_LONG, "invalid StudyInstanceUID (longer than 64 characters)"),
        ("SeriesInstanceUID", PASSWD, "invalid SeriesInstanceUID (not only digits and dots)"),
        ("SOPInstanceUID", LEADING_ZERO, "invalid SOPInstanceUID (leading zero in a component)"),
    ],
)
def test_c_store_with_a_malformed_uid_is_refused_and_nothing_is_kept(
    make_service: Callable[..., Gateway],
    dx_factory: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    keyword: str,
    uid: str,
    comment: str,
) -> None:
    service = make_service()
    bad = _with_uid(dx_factory(), tmp_path / "bad.dcm", keyword, uid)
    with caplog.at_level("ERROR", logger="overread.service.scp"):
        done = _storescu(service.dicom_port, bad)
    output = done.stdout + done.stderr
    assert "DIMSE Status                  : 0xc000: Error: Cannot understand" in output, output
    assert comment in output, output  # the Error Comment names the UID and the reason
    assert any(
        "C-STORE refused" in r.getMessage() and keyword in r.getMessage() for r in caplog.records
    )
    assert _counts(service) == (0, 0, 0)
    assert _stored_files(service) == []
    with service.database.session() as session:  # no receive was audited
        assert not session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.RECEIVE.value)
        ).all()

    good = dx_factory()  # a well-formed instance still stores, on the same gateway
    done = _storescu(service.dicom_port, good)
    assert (
        done.returncode == 0
        and "Status                  : 0x0000: Success" in done.stdout + done.stderr
    )
    with service.database.session() as session:
        assert session.scalars(select(Instance.study_instance_uid)).all() == [
            str(pydicom.dcmread(good).StudyInstanceUID)
        ]


def _multipart(parts: list[bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        for data in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def test_stow_rs_refuses_parts_with_malformed_uids(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    service = make_service(workers=0)
    auth = bearer(api_token(service, "service"))
    url = f"http://127.0.0.1:{service.http_port}/dicom-web/studies"
    source = dx_factory()
    bad = [
        _with_uid(source, tmp_path / f"bad{n}.dcm", "StudyInstanceUID", uid)
        for n, uid in enumerate(BAD)
    ]
    content_type, body = _multipart([p.read_bytes() for p in bad])
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 409  # none stored
    failed = reply.json()["00081198"]["Value"]
    sop = pydicom.dcmread(source)
    assert [item["00081197"]["Value"] for item in failed] == [[0xC000]] * 4
    # The refused parts' own (well-formed) SOP Class and Instance UIDs are named.
    assert {item["00081155"]["Value"][0] for item in failed} == {str(sop.SOPInstanceUID)}
    assert {item["00081150"]["Value"][0] for item in failed} == {str(sop.SOPClassUID)}
    assert _counts(service) == (0, 0, 0)
    assert _stored_files(service) == []
    with service.database.session() as session:  # the request is audited as what happened
        (event,) = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == AuditAction.RECEIVE_REFUSED.value,
                AuditEvent.actor != "ae:STOW-RS",
            )
        ).all()
        assert not event.object_uids and all(uid not in str(event.details) for uid in BAD)
        assert event.details["stored"] == 0 and event.details["status"] == 409
        # ... and each refused part with its reason, never the malformed value itself.
        parts = session.scalars(select(AuditEvent).where(AuditEvent.actor == "ae:STOW-RS")).all()
        assert len(parts) == len(BAD)
        assert all("invalid StudyInstanceUID" in p.details["reason"] for p in parts)
        assert all(uid not in str(p.details) + str(p.object_uids) for p in parts for uid in BAD)

    good = dx_factory()
    bad_sop = _with_uid(dx_factory(), tmp_path / "badsop.dcm", "SOPInstanceUID", PASSWD)
    content_type, body = _multipart([good.read_bytes(), bad_sop.read_bytes()])
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 202  # the good part stored, the bad one refused
    data = reply.json()
    assert [i["00081155"]["Value"][0] for i in data["00081199"]["Value"]] == [
        str(pydicom.dcmread(good).SOPInstanceUID)
    ]
    (refused,) = data["00081198"]["Value"]
    assert refused["00081197"]["Value"] == [0xC000] and "00081155" not in refused  # not echoed
    with service.database.session() as session:
        assert session.scalars(select(Instance.sop_instance_uid)).all() == [
            str(pydicom.dcmread(good).SOPInstanceUID)
        ]
    assert len(_stored_files(service)) == 1
