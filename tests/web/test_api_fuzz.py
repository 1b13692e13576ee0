"""schemathesis against the API's own OpenAPI schema: no input makes it fail with a 5xx.

Every operation is called with generated valid and invalid parameters and bodies,
as a radiologist and as an administrator (between them they hold every permission
but ingest and the audit export, whose operations are fuzzed with their holders).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from overread.security import ROLE_PERMISSIONS, Permission, Role

from .conftest import ApiGateway, _gateway

pytestmark = [pytest.mark.service, pytest.mark.slow]

#: Examples per operation and generation mode: enough to hit every parameter's
#: boundaries (schemathesis starts with them) while the whole run stays near a minute.
EXAMPLES = 12


@schemathesis.serializer('multipart/related; type="application/dicom"', "multipart/related")
def _raw_multipart(ctx: object, value: object) -> bytes:
    """STOW-RS bodies are sent as generated: arbitrary bytes under the declared type."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiGateway]:
    tmp = tmp_path_factory.mktemp("fuzz")
    yield from _gateway(tmp, f"sqlite:///{tmp / 'overread.db'}")


def _role_for(permission: str) -> Role:
    if permission in ("public", "authenticated"):
        return Role.RADIOLOGIST
    for role in (Role.RADIOLOGIST, Role.ADMIN, Role.TECHNOLOGIST, Role.AUDITOR, Role.SERVICE):
        if Permission(permission) in ROLE_PERMISSIONS[role]:
            return role
    raise AssertionError(f"no role holds {permission}")


def _operations(gateway: ApiGateway) -> list[tuple[str, object]]:
    # The schema is for signed-in callers (public_api_docs is off by default).
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", gateway.app, headers=gateway.headers(Role.RADIOLOGIST)
    )
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        found.append((f"{operation.method.upper()} {operation.path}", operation))
    return found


def _fuzz(
    operation: Any, label: str, headers: dict[str, str], failures: list[str], seen: set[int]
) -> None:
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers={**(case.headers or {}), **headers})
        seen.add(response.status_code)
        if response.status_code >= 500:
            failures.append(
                f"{label}: {response.status_code} for {case.path_parameters} "
                f"{case.query} {case.body!r:.200}: {response.text[:300]}"
            )

    run()


def test_no_generated_request_gets_a_server_error(fuzz_gateway: ApiGateway, tmp_path: Path) -> None:
    gateway = fuzz_gateway
    operations = _operations(gateway)
    assert len(operations) >= 30
    failures: list[str] = []
    answered: list[str] = []
    for label, operation in operations:
        if label == "POST /api/auth/logout":
            continue  # harmless, but it would end the sessions other calls might use
        permission = operation.definition.raw.get("x-permission", "public")  # type: ignore[attr-defined]
        headers = gateway.headers(_role_for(permission))
        seen: set[int] = set()
        _fuzz(operation, label, headers, failures, seen)
        if permission != "public":  # a login with a generated password is refused, rightly
            assert 401 not in seen and 403 not in seen, f"{label} refused the fuzzing role"
        if any(200 <= code < 300 for code in seen):
            answered.append(label)
    assert failures == []
    # Most operations were reached, not just refused as invalid.
    assert len(answered) >= 12, answered
