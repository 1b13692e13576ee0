"""QIDO-RS and WADO-RS on stored instances, in-process: matching, paging, errors, access."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.gateway import Gateway
from overread.security import Role
from overread.web.app import create_app

from .conftest import make_gateway, tokens_for_every_role
from .dicomweb_support import instance, parts_of, read_part

PN, PID, DATE, ACC, SUID, SEUID, IUID = (
    "00100010",
    "00100020",
    "00080020",
    "00080050",
    "0020000D",
    "0020000E",
    "00080018",
)


@dataclass
class Archive:
    service: Gateway
    client: TestClient
    tokens: dict[Role, str]
    study_a: str
    study_b: str
    series_a: str
    multiframe: tuple[str, str, str]
    implicit: tuple[str, str, str]

    def get(self, path: str, role: Role | None = Role.RADIOLOGIST, **headers: str):  # type: ignore[no-untyped-def]
        auth = {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}
        return self.client.get(f"/dicom-web{path}", headers={**auth, **headers})


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    service = make_gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'overread.db'}")
    tokens = tokens_for_every_role(service)
    study_a, study_b, series_a = generate_uid(), generate_uid(), generate_uid()
    ingest = service.ingestor.ingest
    for number in (1, 2):
        ingest(instance(study=study_a, series=series_a, number=number), calling_ae="TEST")
    multi = instance(study=study_a, frames=3, number=3, window=None)
    ingest(multi, calling_ae="TEST")
    ingest(
        instance(
            study=study_b,
            patient_name="Roe^Richard",
            patient_id="PID-2",
            study_date="20231231",
            accession="ACC-2",
            modality="DX",
        ),
        calling_ae="TEST",
    )
    implicit_path = Path(str(get_testdata_file("MR_small_implicit.dcm")))
    ingest(implicit_path.read_bytes(), calling_ae="TEST")
    mf = read_part(multi)
    mr = read_part(implicit_path.read_bytes())
    try:
        with TestClient(create_app(service)) as client:
            yield Archive(
                service,
                client,
                tokens,
                study_a,
                study_b,
                series_a,
                (mf.StudyInstanceUID, mf.SeriesInstanceUID, mf.SOPInstanceUID),
                (mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID),
            )
    finally:
        service.database.dispose()


def _values(results: list[dict], tag: str) -> list[object]:  # type: ignore[type-arg]
    return [r[tag]["Value"][0] for r in results if "Value" in r.get(tag, {})]


def test_study_search_matches_name_wildcards_dates_and_accession(archive: Archive) -> None:
    everything = archive.get("/studies")
    assert everything.status_code == 200
    assert everything.headers["content-type"].startswith("application/dicom+json")
    assert len(everything.json()) == 3
    doe = archive.get("/studies?PatientName=doe*").json()  # names match without regard to case
    assert _values(doe, SUID) == [archive.study_a]
    assert _values(doe, PN) == [{"Alphabetic": "Doe^Jane"}]
    assert _values(archive.get("/studies?PatientName=R?e^Richard").json(), SUID) == [
        archive.study_b
    ]
    assert _values(archive.get("/studies?StudyDate=20240101-").json(), SUID) == [archive.study_a]
    assert _values(archive.get("/studies?StudyDate=-20231231").json(), SUID)[0] != archive.study_a
    assert _values(archive.get("/studies?StudyDate=20231231").json(), SUID) == [archive.study_b]
    assert _values(archive.get("/studies?AccessionNumber=ACC-2").json(), SUID) == [archive.study_b]
    assert archive.get("/studies?PatientID=nobody").json() == []
    uids = f"{archive.study_b},{archive.study_a}"
    assert sorted(_values(archive.get(f"/studies?StudyInstanceUID={uids}").json(), SUID)) == sorted(
        [archive.study_a, archive.study_b]
    )
    ct = archive.get("/studies?ModalitiesInStudy=CT").json()
    assert _values(ct, SUID) == [archive.study_a]
    assert ct[0]["00201208"]["Value"] == [3]  # Number of Study Related Instances
    assert ct[0]["00201206"]["Value"] == [2]  # Number of Study Related Series


def test_series_and_instance_searches_and_includefield(archive: Archive) -> None:
    series = archive.get(f"/studies/{archive.study_a}/series").json()
    assert sorted(_values(series, SEUID)) == sorted([archive.series_a, archive.multiframe[1]])
    assert PN not in series[0]  # scoped to a study: series attributes only
    counts = {s[SEUID]["Value"][0]: s["00201209"]["Value"][0] for s in series}
    assert counts[archive.series_a] == 2
    every_series = archive.get("/series?Modality=DX").json()
    assert _values(every_series, PID) == ["PID-2"]  # unscoped: study attributes too
    found = archive.get(f"/studies/{archive.study_a}/series/{archive.series_a}/instances").json()
    assert len(found) == 2
    assert found[0]["00081190"]["Value"][0].endswith(
        f"/dicom-web/studies/{archive.study_a}/series/{archive.series_a}/instances/"
        f"{found[0][IUID]['Value'][0]}"
    )
    frames = archive.get(f"/instances?SOPInstanceUID={archive.multiframe[2]}").json()
    assert frames[0]["00280008"]["Value"] == [3]
    described = archive.get("/studies?includefield=StudyDescription,00180015").json()
    assert _values(described, "00081030")[:2] == ["CHEST", "CHEST"]
    assert all("00180015" in r for r in described)  # asked for: returned, empty if absent
    everything = archive.get(
        f"/studies/{archive.study_a}/series/{archive.series_a}/instances?includefield=all"
    ).json()
    assert "00280010" in everything[0] and "7FE00010" not in everything[0]


def test_limit_and_offset_page_through_results_in_a_stable_order(archive: Archive) -> None:
    whole = _values(archive.get("/instances").json(), IUID)
    assert len(whole) == 5
    pages = [_values(archive.get(f"/instances?limit=2&offset={o}").json(), IUID) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [uid for page in pages for uid in page] == whole
    assert archive.get("/instances?offset=5").json() == []


@pytest.mark.parametrize(
    "query",
    [
        "PatientNam=x",
        "StudyDate=2024",
        "StudyDate=20240101-20240102-20240103",
        "StudyInstanceUID=1.2.*",
        "limit=0",
        "limit=abc",
        "offset=-1",
        "fuzzymatching=maybe",
        "includefield=NotAnAttribute",
        "ReferencedSeriesSequence=x",
        "00100010.00100020=x",
    ],
)
def test_bad_search_parameters_are_400(archive: Archive, query: str) -> None:
    assert archive.get(f"/studies?{query}").status_code == 400


def test_errors_unknown_uids_404_bad_uids_400_unacceptable_406(archive: Archive) -> None:
    study, series, sop = archive.multiframe
    unknown = "1.2.3.4.5.6.7"
    assert archive.get(f"/studies/{unknown}").status_code == 404
    assert archive.get(f"/studies/{unknown}/metadata").status_code == 404
    assert archive.get(f"/studies/{study}/series/{unknown}").status_code == 404
    assert archive.get(f"/studies/{study}/series/{series}/instances/{unknown}").status_code == 404
    assert (
        archive.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/4").status_code == 404
    )
    assert (
        archive.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/0").status_code == 400
    )
    assert (
        archive.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/a").status_code == 400
    )
    assert archive.get("/studies/not-a-uid").status_code == 400
    assert archive.get(f"/studies/{unknown}/series").json() == []  # a search: no match
    assert archive.get("/studies", accept="application/dicom+xml").status_code == 406
    assert archive.get(f"/studies/{study}", accept="application/pdf").status_code == 406
    assert (
        archive.get(
            f"/studies/{study}",
            accept='multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50",
        ).status_code
        == 406
    )
    rendered = f"/studies/{study}/series/{series}/instances/{sop}/rendered"
    assert archive.get(rendered, accept="image/gif").status_code == 406
    assert archive.get(rendered + "?window=1,0").status_code == 400
    assert archive.get(rendered + "?quality=101").status_code == 400


def test_retrieve_gives_the_stored_instances_back(archive: Archive) -> None:
    reply = archive.get(
        f"/studies/{archive.study_a}", accept='multipart/related; type="application/dicom"'
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = parts_of(reply.headers["content-type"], reply.content)
    assert len(parts) == 3
    datasets = [read_part(data) for _, data in parts]
    assert {d.StudyInstanceUID for d in datasets} == {archive.study_a}
    multi = next(d for d in datasets if d.SOPInstanceUID == archive.multiframe[2])
    assert multi.pixel_array.shape == (3, 16, 16)
    study, series, sop = archive.implicit
    as_stored = archive.get(f"/studies/{study}/series/{series}/instances/{sop}")
    [(_, data)] = parts_of(as_stored.headers["content-type"], as_stored.content)
    assert read_part(data).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    explicit = archive.get(
        f"/studies/{study}/series/{series}/instances/{sop}",
        accept='multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
    )
    [(headers, data)] = parts_of(explicit.headers["content-type"], explicit.content)
    converted = read_part(data)
    assert converted.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    original = read_part(Path(str(get_testdata_file("MR_small_implicit.dcm"))).read_bytes())
    assert np.array_equal(converted.pixel_array, original.pixel_array)


def test_metadata_frames_and_rendered(archive: Archive) -> None:
    study, series, sop = archive.multiframe
    base = f"/studies/{study}/series/{series}/instances/{sop}"
    [meta] = archive.get(base + "/metadata").json()
    assert meta[IUID]["Value"] == [sop] and "7FE00010" not in meta
    assert len(archive.get(f"/studies/{study}/metadata").json()) == 3
    frames = archive.get(base + "/frames/3,1")
    assert frames.status_code == 200
    parts = parts_of(frames.headers["content-type"], frames.content)
    values = [np.frombuffer(data, dtype="<u2").reshape(16, 16) for _, data in parts]
    assert [int(v[5, 5]) for v in values] == [300, 100]  # in the order asked
    assert all(h["content-type"] == "application/octet-stream" for h, _ in parts)
    png = archive.get(base + "/frames/2/rendered", accept="image/png")
    assert png.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(png.content)))
    assert picture.shape == (16, 16) and picture[0, 0] == 255 and picture[5, 5] == 0
    windowed = archive.get(base + "/frames/2/rendered?window=-824,200", accept="image/png")
    assert np.asarray(Image.open(io.BytesIO(windowed.content)))[5, 5] == 128
    jpeg = archive.get(base + "/rendered?viewport=8,8")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (8, 8)


def test_access_follows_the_rest_api(archive: Archive) -> None:
    study, series, sop = archive.multiframe
    base = f"/studies/{study}/series/{series}/instances/{sop}"
    assert archive.get("/studies", role=None).status_code == 401
    assert archive.get(base, role=None).status_code == 401
    assert archive.get("/studies", role=Role.AUDITOR).status_code == 403  # no view_results
    assert archive.get(base + "/metadata", role=Role.AUDITOR).status_code == 403
    # admin: view_results without patient identity
    admin = archive.get("/studies", role=Role.ADMIN).json()
    assert admin and all(PN not in r and PID not in r and ACC not in r for r in admin)
    assert archive.get("/studies?PatientID=PID-1", role=Role.ADMIN).status_code == 403
    [meta] = archive.get(base + "/metadata", role=Role.ADMIN).json()
    assert PN not in meta and PID not in meta and meta[IUID]["Value"] == [sop]
    assert archive.get(base, role=Role.ADMIN).status_code == 403  # files carry identity
    assert archive.get(base + "/rendered", role=Role.ADMIN).status_code == 200
    # the service account files results and sees identity, as in the FHIR report
    service = archive.get("/studies?PatientID=PID-1", role=Role.SERVICE).json()
    assert _values(service, PID) == ["PID-1"]
    assert archive.get(base, role=Role.SERVICE).status_code == 200
    # the radiologist's full view is unchanged by the admin's stripped one (cached headers)
    [again] = archive.get(base + "/metadata").json()
    assert again[PN]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    with archive.service.database.session() as session:
        events = session.scalars(select(AuditEvent)).all()
        denied = [e for e in events if e.action == "access-denied" and e.role == "admin"]
        viewed = [e for e in events if e.action == "view" and "wado-rs" in str(e.details)]
    assert len(denied) == 2 and viewed
