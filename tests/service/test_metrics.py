"""``GET /metrics``: the gateway's operational metrics, read by Prometheus's own parser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overread.gateway import Gateway
from overread.harness import storescu

from .conftest import Storescp, api_token, bearer, job_states, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_ingest_jobs_stages_destinations_and_models(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    url = f"http://127.0.0.1:{service.http_port}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401  # not public by default
    image = dx_factory(size=256)
    storescu(service.dicom_port or 0, [image])
    wait_until(lambda: job_states(service) == ["succeeded", "succeeded"])
    reply = httpx.get(url, headers=bearer(api_token(service, "technologist")), timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = _samples(reply.text)
    received = (("via", "c-store"),)
    assert samples[("overread_ingest_instances_total", received)] == 1
    # The bytes as received (the peer's encoding with its file meta), about the file's size.
    received_bytes = samples[("overread_ingest_bytes_total", (("via", "c-store"),))]
    assert abs(received_bytes - image.stat().st_size) < 1024
    assert samples[("overread_jobs", (("kind", "infer"), ("state", "succeeded")))] == 1
    assert samples[("overread_jobs", (("kind", "export"), ("state", "succeeded")))] == 1
    assert samples[("overread_stage_seconds_count", (("stage", "inference"),))] == 1
    assert samples[("overread_stage_seconds_count", (("stage", "read"),))] == 1
    assert samples[("overread_destination_up", (("destination", "PACS"),))] == 1
    assert samples[("overread_destination_waiting_exports", (("destination", "PACS"),))] == 0
    assert samples[("overread_database_up", ())] == 1
    models = {
        labels: value for (name, labels), value in samples.items() if name == "overread_model_info"
    }
    # One series per route: the chest X-ray model and the CT model of the default routes.
    routes = {dict(labels)["route"]: dict(labels) for labels in models}
    assert set(routes) == {"chest-xray", "chest-ct"}
    model = routes["chest-xray"]
    assert (model["alias"], model["name"]) == ("cxr-default", "cxr-default")
    assert model["version"] and model["version"] != "unresolved"
    assert routes["chest-ct"]["name"] == "ct-nodule-cad"
    assert routes["chest-ct"]["version"] != "unresolved"
    # No patient data in it.
    for phi in ("PatientName", str(image.name)):
        assert phi not in reply.text


def test_metrics_can_be_public_for_a_trusted_scraper(
    make_service: Callable[..., Gateway],
) -> None:
    service = make_service(workers=0, public_metrics=True)
    reply = httpx.get(f"http://127.0.0.1:{service.http_port}/metrics", timeout=10)
    assert reply.status_code == 200
    assert ("overread_database_up", ()) in _samples(reply.text)


def test_metrics_answer_a_scrape_token_or_an_allowed_address_only(
    make_service: Callable[..., Gateway],
) -> None:
    token = "scrape-" + "x" * 24
    service = make_service(workers=0, metrics_scrape_token=token)
    url = f"http://127.0.0.1:{service.http_port}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=bearer("scrape-wrong" + "x" * 20), timeout=10).status_code == 401
    reply = httpx.get(url, headers=bearer(token), timeout=10)
    assert reply.status_code == 200
    assert ("overread_database_up", ()) in _samples(reply.text)
    # A signed-in caller still may; the token opens nothing else.
    assert (
        httpx.get(url, headers=bearer(api_token(service, "admin")), timeout=10).status_code == 200
    )
    jobs = f"http://127.0.0.1:{service.http_port}/api/jobs"
    assert httpx.get(jobs, headers=bearer(token), timeout=10).status_code == 401

    # The loopback scraper's address is allowed; another network is not.
    allowed = make_service(workers=0, metrics_allowed_addresses=["127.0.0.0/8"])
    reply = httpx.get(f"http://127.0.0.1:{allowed.http_port}/metrics", timeout=10)
    assert reply.status_code == 200 and ("overread_database_up", ()) in _samples(reply.text)
    elsewhere = make_service(workers=0, metrics_allowed_addresses=["10.1.2.0/24"])
    assert (
        httpx.get(f"http://127.0.0.1:{elsewhere.http_port}/metrics", timeout=10).status_code == 401
    )
