"""Request bodies are bounded, 422s never repeat what was sent, the API docs are not public.

Against a running gateway (uvicorn on a loopback port): an oversized body is refused
with 413 before the server has read it (from ``Content-Length``, or while a chunked
body streams in), login's validation errors leave the submitted password out, STOW-RS
has its own configurable limit, and ``/docs``, ``/redoc`` and ``/openapi.json`` need a
signed-in caller unless ``public_api_docs`` is on.
"""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select as sql_select

from overread.gateway import Gateway
from overread.security import Role
from overread.service.db import Instance

from .conftest import PASSWORD, tokens_for_every_role, write_chest_dx

DOCS_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
MiB = 1024 * 1024


def _base(service: Gateway) -> str:
    return f"http://127.0.0.1:{service.http_port}"


def _status_line(reply: bytes) -> int:
    head = reply.split(b"\r\n", 1)[0].decode()
    return int(head.split()[1])


def _read_reply(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _declared_but_unsent(service: Gateway, path: str, declared: int, headers: str = "") -> bytes:
    """Declare a ``declared``-byte body, send 1 KiB of it, and read the answer."""
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {declared}\r\n{headers}\r\n"
            ).encode()
            + b"{" * 1024
        )
        return _read_reply(sock)


def _chunked_until_answered(
    service: Gateway, path: str, *, total: int, content_type: str, headers: str = ""
) -> tuple[bytes, int]:
    """Stream up to ``total`` bytes chunked (no Content-Length); stop at the first answer.

    Returns the answer and how many body bytes were sent before it came.
    """
    sent = 0
    piece = b"x" * (256 * 1024)
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                f"Transfer-Encoding: chunked\r\n{headers}\r\n"
            ).encode()
        )
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except OSError:  # the server answered and closed
                break
            sent += len(piece)
        return _read_reply(sock), sent


def test_an_oversized_login_body_is_refused_unread(
    make_gateway_service: Callable[..., Gateway],
) -> None:
    service = make_gateway_service()
    # 200 MB declared, 1 KiB sent: the answer comes at once, so nothing waited for the rest.
    started = time.monotonic()
    reply = _declared_but_unsent(service, "/api/auth/login", 200_000_000)
    assert _status_line(reply) == 413
    assert time.monotonic() - started < 5
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body == {"detail": "request body too large (limit 65536 bytes)"}
    # Without Content-Length (chunked), the body is cut off once it passes the limit.
    reply, sent = _chunked_until_answered(
        service, "/api/auth/login", total=200_000_000, content_type="application/json"
    )
    assert _status_line(reply) == 413
    assert sent < 32 * MiB, f"{sent} bytes were taken before the refusal"
    # The UI's login form has the same bound.
    assert _status_line(_declared_but_unsent(service, "/login", 200_000_000)) == 413
    # A normal login still works, right after.
    tokens_for_every_role(service)
    reply_ok = httpx.post(
        f"{_base(service)}/api/auth/login",
        json={"username": "radiologist-user", "password": PASSWORD},
        timeout=30,
    )
    assert reply_ok.status_code == 200
    assert reply_ok.json()["role"] == "radiologist"


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "", "password": "SECRET-{}"},  # the user name is invalid
        {"username": "someone", "password": "SECRET-{}" + "x" * 2000},  # the password too long
        {"username": "someone", "password": "SECRET-{}", "extra": "SECRET-{}"},  # unknown key
        {"username": ["SECRET-{}"], "password": 7},  # wrong types
    ],
)
def test_login_validation_errors_do_not_repeat_the_password(
    make_gateway_service: Callable[..., Gateway], payload: dict[str, object]
) -> None:
    service = make_gateway_service()
    marker = uuid.uuid4().hex
    sent = json.loads(json.dumps(payload).replace("{}", marker))
    reply = httpx.post(f"{_base(service)}/api/auth/login", json=sent, timeout=30)
    assert reply.status_code == 422
    assert marker not in reply.text
    errors = reply.json()["detail"]
    assert errors, "the errors are listed"
    for error in errors:
        assert set(error) == {"loc", "type", "msg"}
        assert error["loc"][0] == "body"


def _multipart(files: list[bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        for data in files
    )
    return (
        f'multipart/related; type="application/dicom"; boundary={boundary}',
        body + b"--" + boundary.encode() + b"--\r\n",
    )


def test_stow_rs_has_its_own_configurable_limit(
    make_gateway_service: Callable[..., Gateway], tmp_path: Path
) -> None:
    service = make_gateway_service(max_stow_bytes=MiB)
    token = tokens_for_every_role(service)[Role.SERVICE]
    auth = {"Authorization": f"Bearer {token}"}
    study = generate_uid()
    small = write_chest_dx(tmp_path / "small.dcm", study_uid=study, size=256).read_bytes()
    big = write_chest_dx(tmp_path / "big.dcm", study_uid=study, size=1024, seed=1).read_bytes()
    assert len(small) < MiB // 2 < MiB < len(big)
    url = f"{_base(service)}/dicom-web/studies"
    # Over the limit, declared: 413 and nothing stored.
    content_type, body = _multipart([big])
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 413
    assert reply.json() == {"detail": f"request body too large (limit {MiB} bytes)"}
    # Over the limit, chunked: cut off while streaming.
    answer, sent = _chunked_until_answered(
        service,
        "/dicom-web/studies",
        total=64 * MiB,
        content_type=content_type,
        headers=f"Authorization: Bearer {token}\r\n",
    )
    assert _status_line(answer) == 413
    assert sent < 48 * MiB
    with service.database.session() as session:
        assert session.scalars(sql_select(Instance)).all() == []
    # Under it (and far over the JSON routes' 64 KiB): stored.
    content_type, body = _multipart([small])
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    with service.database.session() as session:
        assert len(session.scalars(sql_select(Instance)).all()) == 1


def test_api_docs_need_a_signed_in_caller_by_default(
    make_gateway_service: Callable[..., Gateway],
) -> None:
    service = make_gateway_service()
    tokens = tokens_for_every_role(service)
    for path in DOCS_PATHS:
        reply = httpx.get(f"{_base(service)}{path}", timeout=30)
        assert reply.status_code == 401, path
        assert reply.json() == {"detail": "authentication required"}
        assert "openapi" not in reply.text.lower()
    # Any role will do, by token or by the session cookie of a password login.
    for role in (Role.AUDITOR, Role.SERVICE):
        headers = {"Authorization": f"Bearer {tokens[role]}"}
        for path in DOCS_PATHS:
            reply = httpx.get(f"{_base(service)}{path}", headers=headers, timeout=30)
            assert reply.status_code == 200, (role, path)
    schema = httpx.get(f"{_base(service)}/openapi.json", headers=headers, timeout=30).json()
    assert "/api/auth/login" in schema["paths"]
    with httpx.Client(base_url=_base(service), timeout=30) as browser:
        login = browser.post(
            "/api/auth/login", json={"username": "admin-user", "password": PASSWORD}
        )
        assert login.status_code == 200
        assert browser.get("/docs").status_code == 200
    # A bad token is no sign-in.
    reply = httpx.get(
        f"{_base(service)}/openapi.json", headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert reply.status_code == 401


def test_api_docs_are_public_when_configured(
    make_gateway_service: Callable[..., Gateway],
) -> None:
    service = make_gateway_service(public_api_docs=True)
    for path in DOCS_PATHS:
        reply = httpx.get(f"{_base(service)}{path}", timeout=30)
        assert reply.status_code == 200, path
    schema = httpx.get(f"{_base(service)}/openapi.json", timeout=30).json()
    assert "/dicom-web/studies" in schema["paths"]
    # Only the documentation: the API itself still needs credentials.
    assert httpx.get(f"{_base(service)}/api/worklist", timeout=30).status_code == 401
