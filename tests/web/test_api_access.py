"""Every route of the OpenAPI schema: 401 without credentials, 403 for a role lacking its
permission, and neither for a role holding it; no patient data in any refusal.

The calls are generated from ``app.openapi()`` (paths, methods, parameters, bodies and
each operation's ``x-permission``), so a new route is checked without editing this file.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent, verify_chain
from overread.security import ROLE_PERMISSIONS, Permission, Role

from .conftest import PATIENT_ID, ApiGateway

pytestmark = pytest.mark.service

PUBLIC = "public"
AUTHENTICATED = "authenticated"
#: Routes anyone may call, and nothing else.
# /metrics checks credentials itself: 401 unless the site sets public_metrics
# (tests/service/test_metrics.py).
EXPECTED_PUBLIC = {("GET", "/health"), ("GET", "/metrics"), ("POST", "/api/auth/login")}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node


def example(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """A small valid value of a JSON schema (required properties only)."""
    node = _resolve(schema, node)
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            options = [o for o in node[key] if _resolve(schema, o).get("type") != "null"]
            return example(schema, options[0]) if options else None
    kind = node.get("type")
    if kind == "object":
        return {
            name: example(schema, node["properties"][name]) for name in node.get("required", [])
        }
    if kind == "array":
        return []
    if kind == "integer":
        return max(int(node.get("minimum", 1)), 1)
    if kind == "number":
        return float(node.get("minimum", 0))
    if kind == "boolean":
        return True
    pattern = node.get("pattern", "")
    if pattern.startswith("^[0-9][0-9.]"):
        return "1.2.3.4"
    if pattern.startswith("^[0-9]{4}"):
        return "2026-01-01"
    return "cxr-default"


def operations(gateway: ApiGateway) -> list[tuple[str, str, dict[str, Any]]]:
    schema = gateway.app.openapi()
    found = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            found.append((method.upper(), path, op))
    return found


def request_for(gateway: ApiGateway, path: str, op: dict[str, Any]) -> dict[str, Any]:
    """URL and keyword arguments for one call of an operation, with plausible values."""
    schema = gateway.app.openapi()
    url = path
    params: dict[str, Any] = {}
    for parameter in op.get("parameters", []):
        value = example(schema, parameter.get("schema", {}))
        if parameter["in"] == "path":
            if parameter["name"] == "study_instance_uid":
                value = gateway.study_uid
            elif parameter["name"] == "alert_id":
                value = gateway.alert_id
            url = url.replace("{" + parameter["name"] + "}", str(value))
        elif parameter["in"] == "query" and parameter.get("required"):
            params[parameter["name"]] = value
    kwargs: dict[str, Any] = {"params": params}
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        kwargs["json"] = example(schema, content["application/json"]["schema"])
    elif content:
        kwargs["content"] = b""
        kwargs["headers"] = {"Content-Type": next(iter(content))}
    assert "{" not in url, f"unfilled path parameter in {url}"
    return {"url": url, **kwargs}


def call(gateway: ApiGateway, method: str, path: str, op: dict[str, Any], role: Role | None) -> Any:
    spec = request_for(gateway, path, op)
    headers = {**spec.pop("headers", {}), **gateway.headers(role)}
    gateway.client.cookies.clear()
    return gateway.client.request(method, spec.pop("url"), headers=headers, **spec)


def holders(permission: str) -> list[Role]:
    return [r for r in Role if Permission(permission) in ROLE_PERMISSIONS[r]]


def lacking(permission: str) -> list[Role]:
    return [r for r in Role if Permission(permission) not in ROLE_PERMISSIONS[r]]


def assert_no_phi(text: str) -> None:
    assert PATIENT_ID not in text


def test_every_operation_declares_a_known_permission(gateway: ApiGateway) -> None:
    ops = operations(gateway)
    assert len(ops) >= 30
    known = {p.value for p in Permission} | {PUBLIC, AUTHENTICATED}
    for method, path, op in ops:
        assert op.get("x-permission") in known, f"{method} {path}: no x-permission"
    public = {(m, p) for m, p, op in ops if op["x-permission"] == PUBLIC}
    assert public == EXPECTED_PUBLIC


def test_every_route_refuses_anonymous_and_wrong_roles(gateway_any_db: ApiGateway) -> None:
    gateway = gateway_any_db
    denied_expected = []
    for method, path, op in operations(gateway):
        permission = op["x-permission"]
        if permission == PUBLIC:
            continue
        anonymous = call(gateway, method, path, op, None)
        assert anonymous.status_code == 401, f"{method} {path} without credentials"
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert_no_phi(anonymous.text)
        if permission == AUTHENTICATED:
            continue
        for role in lacking(permission):
            refused = call(gateway, method, path, op, role)
            assert refused.status_code == 403, f"{method} {path} as {role.value}"
            assert permission in refused.json()["detail"]
            assert_no_phi(refused.text)
            denied_expected.append((f"{role.value}-user", method, permission))
    assert denied_expected
    with gateway.service.database.session() as session:
        denied = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ACCESS_DENIED.value)
        ).all()
    recorded = [(e.actor, e.details["method"], e.details["permission"]) for e in denied]
    assert recorded == denied_expected
    assert verify_chain(gateway.service.database.engine).ok


def test_every_route_admits_the_roles_holding_its_permission(gateway: ApiGateway) -> None:
    for method, path, op in operations(gateway):
        permission = op["x-permission"]
        if permission == PUBLIC:
            continue
        roles = list(Role) if permission == AUTHENTICATED else holders(permission)
        assert roles, f"{method} {path}: no role holds {permission}"
        for role in roles:
            # Logging out ends web sessions only: the token used here stays valid.
            reply = call(gateway, method, path, op, role)
            assert reply.status_code not in (401, 403), f"{method} {path} as {role.value}"
            assert reply.status_code < 500, f"{method} {path} as {role.value}: {reply.text}"
            if Permission.VIEW_PHI not in ROLE_PERMISSIONS[role] and not (
                Permission.EXPORT_RESULTS in ROLE_PERMISSIONS[role] and path.endswith("/fhir")
            ):
                assert_no_phi(reply.text)


def all_routes(routes: list[Any]) -> list[APIRoute]:
    """Every API route of an application, through included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if hasattr(route, "original_router"):  # an included router (FastAPI >= 0.130)
            found.extend(all_routes(route.original_router.routes))
        elif isinstance(route, APIRoute):
            found.append(route)
    return found


def test_the_schema_lists_every_visible_route(gateway: ApiGateway) -> None:
    visible = {
        (method, route.path)
        for route in all_routes(gateway.app.routes)
        if route.include_in_schema
        for method in route.methods
    }
    assert visible == {(m, p) for m, p, _ in operations(gateway)}


def test_hidden_routes_give_nothing_to_anonymous_callers(gateway: ApiGateway) -> None:
    """Routes left out of the schema (the web UI's pages) refuse anonymous callers too."""
    open_paths = {"/health", "/login", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    hidden = [r for r in all_routes(gateway.app.routes) if not r.include_in_schema]
    for route in hidden:
        if route.path in open_paths:
            continue
        url = re.sub(r"\{study_instance_uid\}", gateway.study_uid, route.path)
        url = re.sub(r"\{[a-z_]+\}", "1", url)
        for method in route.methods - {"HEAD"}:
            gateway.client.cookies.clear()
            reply = gateway.client.request(method, url, follow_redirects=False)
            assert not 200 <= reply.status_code < 300, f"{method} {route.path} without credentials"
            assert_no_phi(reply.text)
