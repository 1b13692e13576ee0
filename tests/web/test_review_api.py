"""The review endpoint takes a finding's decision only with an edit: an accept or a
reject carrying ``findings`` is refused (422) and changes nothing."""

from __future__ import annotations

import pytest

from overread.security import Role

from .conftest import ApiGateway


@pytest.mark.parametrize("action", ["reject", "accept"])
def test_findings_with_an_accept_or_reject_are_refused(gateway: ApiGateway, action: str) -> None:
    uid = gateway.study_uid
    headers = gateway.headers(Role.RADIOLOGIST)
    shown = gateway.client.get(f"/api/studies/{uid}/review", headers=headers)
    assert shown.status_code == 200, shown.text
    before = shown.json()["results"]
    seen = [{"result_id": r["result_id"], "version": r["version"]} for r in before]
    body = {
        "action": action,
        "results": seen,
        "findings": {"Pneumothorax": "negative"},
        "reason": "wrong patient",
    }
    answer = gateway.client.post(f"/api/studies/{uid}/review", json=body, headers=headers)
    assert answer.status_code == 422
    assert answer.json()["detail"] == "`findings` only go with `edit`"
    after = gateway.client.get(f"/api/studies/{uid}/review", headers=headers).json()["results"]
    assert after == before
