"""Free-text error and gate messages can quote a header value: the REST API gives
them only to roles with ``view_phi``."""

from __future__ import annotations

import pytest

from overread.results import ModelRef, Prediction, ResultSummary
from overread.security import Role, phi_fields
from overread.web.api.schemas import DestinationHealth, InstanceFindingsOut, WorklistItemOut

from .conftest import ApiGateway

pytestmark = pytest.mark.service

ECHO = "Invalid value for VR UI: '1.2.3.JOHNDOE.19610304'"


def test_the_message_fields_are_phi() -> None:
    assert "error" in phi_fields(InstanceFindingsOut)
    assert {"gate_reasons", "gate_note"} <= phi_fields(WorklistItemOut)
    assert "last_error" in phi_fields(DestinationHealth)


def test_a_result_error_reaches_only_roles_with_phi_rights(gateway: ApiGateway) -> None:
    from overread.service.db import Result

    failed = Prediction(path=None, ok=False, model=ModelRef("seeded", "0"), error=ECHO)
    with gateway.service.database.session() as session:
        session.add(
            Result(
                job_id=1,
                study_instance_uid=gateway.study_uid,
                model_name="seeded",
                model_version="0",
                summary=ResultSummary(instances=(failed,)).to_dict(),
                artifacts=[],
            )
        )
    url = f"/api/studies/{gateway.study_uid}/results"
    shown = gateway.client.get(url, headers=gateway.headers(Role.RADIOLOGIST)).json()
    assert "JOHNDOE" in str(shown)
    hidden = gateway.client.get(url, headers=gateway.headers(Role.ADMIN))
    assert hidden.status_code == 200 and len(hidden.json()) == len(shown)
    assert "JOHNDOE" not in hidden.text
    assert all("error" not in i for r in hidden.json() for i in r["instances"])


def test_the_screens_gate_notes_are_phi_as_in_the_api() -> None:
    from overread.web.ui.views import StudyView, WorklistRow

    assert "gate_note" in phi_fields(WorklistRow)
    assert "gate_note" in phi_fields(StudyView)
