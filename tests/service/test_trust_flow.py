"""A phantom study with findings through the gateway: every stored finding a reader acts on
carries its explanation trust, in the result, on the worklist, over the REST API and in
the SR sent to the PACS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pytest
from sqlalchemy import select

from overread.phantom import generate_cohort
from overread.results import Decision, ResultSummary
from overread.service.db import Result
from overread.triage import WorklistItem, stored_findings

from .conftest import Storescp, api_token, bearer, needs_dcmtk, send_and_run

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


@pytest.fixture(scope="module")
def phantom_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom radiograph with lung opacity and atelectasis (cohort seed 5, study 2)."""
    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, n=8, seed=5, rows=256, cols=256)
    truth = json.loads((out / "ground_truth.json").read_text())
    entry = next(
        i for i in truth["images"] if any(f["label"] == "Atelectasis" for f in i["findings"])
    )
    return out / entry["path"]


def test_stored_findings_carry_trust_for_what_a_reader_acts_on(
    make_service: Callable[..., Any], storescp: Storescp, phantom_image: Path
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    send_and_run(service, [phantom_image])
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        summary = ResultSummary.from_dict(result.summary)
        [item] = session.scalars(select(WorklistItem)).all()
        worklist = {f.label: f for f in stored_findings(item)}
        study_uid = result.study_instance_uid
    [(_, prediction)] = summary.usable()
    acted = [f for f in prediction.findings if f.decision is not Decision.NEGATIVE]
    assert any(f.decision is Decision.POSITIVE for f in acted)
    for finding in prediction.findings:
        if finding.decision is Decision.NEGATIVE:
            assert finding.trust_score is None
            continue
        assert finding.trust_score is not None and 0.0 <= finding.trust_score <= 1.0
        assert finding.map_concentration is not None and finding.deletion_drop is not None
        assert worklist[finding.label].trust_score == pytest.approx(finding.trust_score)
    assert result.summary["timings"]["trust"] > 0

    token = api_token(service, "radiologist")
    reply = httpx.get(
        f"http://127.0.0.1:{service.http_port}/api/studies/{study_uid}/findings",
        headers=bearer(token),
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    served = {f["label"]: f for r in reply.json() for f in r["findings"]}
    for finding in acted:
        assert served[finding.label]["trust_score"] == pytest.approx(finding.trust_score, abs=1e-6)
    negative = next(f for f in prediction.findings if f.decision is Decision.NEGATIVE)
    assert served[negative.label]["trust_score"] is None

    [sr_file] = storescp.files()
    sr = hd.sr.srread(sr_file)
    trusted = [
        g
        for g in sr.content.get_image_measurement_groups()
        if any(m.name.value == "TRUSTSCORE" for m in g.get_measurements())
    ]
    assert len(trusted) == len(acted)
