"""Send results over HTTP: DICOMweb STOW-RS and FHIR.

Archives in the cloud and vendor-neutral archives increasingly take DICOM over
HTTP (STOW-RS, PS3.18 10.5) rather than DIMSE; EHRs take FHIR. Both clients
here return what the server said per instance, and raise :class:`DeliveryError`
(with ``retryable`` set the way the job system needs) when the request as a whole
failed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import httpx
from pydicom import dcmwrite
from pydicom.dataset import Dataset

from overread.service.outputs.dicom_send import DatasetOrPath, DeliveryError, load_dataset

logger = logging.getLogger(__name__)

Auth = httpx.Auth | tuple[str, str] | str | None

#: HTTP statuses worth retrying later: timeouts, throttling, server trouble.
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


@dataclass
class HttpResult:
    """What an HTTP endpoint answered to one delivery."""

    url: str
    status_code: int
    stored: list[str] = field(default_factory=list)
    failed: dict[str, int | None] = field(default_factory=dict)
    body: Any = None

    @property
    def ok(self) -> bool:
        """Whether the request succeeded and nothing was reported as failed."""
        return 200 <= self.status_code < 300 and not self.failed


def _headers_and_auth(auth: Auth) -> tuple[dict[str, str], httpx.Auth | tuple[str, str] | None]:
    if isinstance(auth, str):
        return {"Authorization": f"Bearer {auth}"}, None
    return {}, auth


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _studies_url(url: str) -> str:
    base = url.rstrip("/")
    if base.rsplit("/", 2)[-1] == "studies" or "/studies/" in base:
        return base
    return f"{base}/studies"


def _sequence_uids(body: Mapping[str, Any], tag: str) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for item in (body.get(tag) or {}).get("Value", []) or []:
        uid_values = (item.get(_REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
        reason_values = (item.get(_FAILURE_REASON) or {}).get("Value") or []
        if uid_values:
            found[str(uid_values[0])] = int(reason_values[0]) if reason_values else None
    return found


def _raise_for_transport(url: str, exc: httpx.HTTPError) -> DeliveryError:
    return DeliveryError(f"{url} could not be reached ({type(exc).__name__}: {exc})", peer=url)


def stow_rs(
    datasets: Iterable[DatasetOrPath],
    url: str,
    auth: Auth = None,
    *,
    timeout: float = 60.0,
    client: httpx.Client | None = None,
) -> HttpResult:
    """Store ``datasets`` on a DICOMweb server with one STOW-RS request.

    Parameters
    ----------
    datasets
        Datasets or DICOM file paths.
    url
        The server's DICOMweb root (``.../dicom-web``); ``/studies`` is appended
        unless the URL already targets a studies resource.
    auth
        ``(user, password)`` for HTTP basic, a bearer token string, or an
        :class:`httpx.Auth`.
    timeout
        Seconds for connect and read.
    client
        An existing :class:`httpx.Client` to reuse (connection pooling).

    Returns
    -------
    HttpResult
        ``stored`` lists the SOP Instance UIDs the server reported as stored;
        ``failed`` maps UIDs it refused to their failure reason code.

    Raises
    ------
    DeliveryError
        On connection failure or an HTTP error status, ``409 Conflict`` included
        (some servers, Orthanc among them, answer 409 when any instance was
        refused even though others were stored: ``error.response`` has both
        lists); ``retryable`` is true for timeouts, 429 and 5xx.
    """
    items = [load_dataset(item) for item in datasets]
    target = _studies_url(url)
    if not items:
        return HttpResult(url=target, status_code=204)
    boundary = f"overread-{uuid.uuid4().hex}"
    parts = []
    for ds in items:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        parts.append(_encode(ds))
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    headers, basic = _headers_and_auth(auth)
    headers.update(
        {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
    )
    owner = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        response = http.post(
            target, content=b"".join(parts), headers=headers, auth=basic or httpx.USE_CLIENT_DEFAULT
        )
    except httpx.HTTPError as exc:
        raise _raise_for_transport(target, exc) from exc
    finally:
        if owner:
            http.close()
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, ValueError):
        body = response.text
    result = HttpResult(url=target, status_code=response.status_code, body=body)
    if isinstance(body, Mapping):
        result.stored = list(_sequence_uids(body, _REFERENCED_SOP_SEQUENCE))
        result.failed = _sequence_uids(body, _FAILED_SOP_SEQUENCE)
    if response.status_code >= 400:
        refused = ", ".join(f"{uid} (reason {reason})" for uid, reason in result.failed.items())
        raise DeliveryError(
            f"STOW-RS to {target} failed: HTTP {response.status_code} "
            f"{response.reason_phrase}; " + (f"refused: {refused}" if refused else str(body)[:300]),
            peer=target,
            retryable=response.status_code in RETRYABLE_HTTP,
            response=result,
        )
    logger.info(
        "STOW-RS to %s: HTTP %d, %d stored, %d failed",
        target,
        response.status_code,
        len(result.stored),
        len(result.failed),
        extra={"peer": target, "status": response.status_code},
    )
    return result


def post_fhir(
    bundle: Mapping[str, Any],
    url: str,
    auth: Auth = None,
    *,
    timeout: float = 60.0,
    client: httpx.Client | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpResult:
    """POST a FHIR Bundle to a FHIR server.

    A ``transaction`` or ``batch`` bundle is posted to the server's base URL (the
    server processes its entries); any other bundle type is stored as a Bundle
    resource (``{base}/Bundle``).

    ``headers`` are extra HTTP headers (e.g. an API gateway's key).

    Raises
    ------
    DeliveryError
        On connection failure or an HTTP error status (the server's
        OperationOutcome, if any, is quoted; ``error.response`` has the status).
    """
    if bundle.get("resourceType") != "Bundle":
        raise DeliveryError("post_fhir expects a FHIR Bundle", peer=url, retryable=False)
    base = url.rstrip("/")
    target = base if bundle.get("type") in ("transaction", "batch") else f"{base}/Bundle"
    request_headers, basic = _headers_and_auth(auth)
    request_headers.update(headers or {})
    request_headers.update(
        {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    )
    owner = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        response = http.post(
            target,
            content=json.dumps(bundle).encode("utf-8"),
            headers=request_headers,
            auth=basic or httpx.USE_CLIENT_DEFAULT,
        )
    except httpx.HTTPError as exc:
        raise _raise_for_transport(target, exc) from exc
    finally:
        if owner:
            http.close()
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, ValueError):
        body = response.text
    if response.status_code >= 400:
        raise DeliveryError(
            f"FHIR POST to {target} failed: HTTP {response.status_code} "
            f"{response.reason_phrase}; {str(body)[:300]}",
            peer=target,
            retryable=response.status_code in RETRYABLE_HTTP,
            response=HttpResult(url=target, status_code=response.status_code, body=body),
        )
    logger.info("FHIR POST to %s: HTTP %d", target, response.status_code, extra={"peer": target})
    return HttpResult(url=target, status_code=response.status_code, body=body)


__all__ = ["RETRYABLE_HTTP", "HttpResult", "post_fhir", "stow_rs"]
