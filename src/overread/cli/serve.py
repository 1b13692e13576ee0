"""``overread serve`` (the gateway) and ``overread worker`` (extra job workers)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from overread.cli.app import app
from overread.cli.options import parse_duration, service_settings

if TYPE_CHECKING:
    from overread.service.config import ServiceConfig

logger = logging.getLogger(__name__)


def _run_until_signalled(
    config: ServiceConfig, *, worker_only: bool, triage_interval: float | None = None
) -> None:
    from overread.gateway import DEFAULT_TRIAGE_INTERVAL, Gateway
    from overread.service.memory import apply_arena_max

    # Before any of the service's threads allocates (a thread's first malloc picks
    # its arena).
    apply_arena_max(config.malloc_arena_max)
    service = Gateway(
        config,
        with_scp=not worker_only,
        with_http=not worker_only,
        with_assembler=not worker_only,
        triage_interval=DEFAULT_TRIAGE_INTERVAL if triage_interval is None else triage_interval,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        service.request_stop()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.start()
        if worker_only:
            typer.echo(f"overread worker: {config.workers} worker(s) on {service.database!r}")
            if config.broker_url:
                from overread.service.wakeups import consume_wakeups, wake_queue

                def _woken() -> None:
                    logger.info("wake-up from the broker")
                    service.wake_workers()

                typer.echo("overread worker: taking wake-ups from the broker")
                # Blocks until SIGTERM/SIGINT (Celery's warm shutdown).
                consume_wakeups(config.broker_url, wake_queue(config.database_url), _woken)
                service.request_stop()
        else:
            typer.echo(
                f"overread serve: DICOM {config.ae_title} on port {service.dicom_port}, "
                f"HTTP on port {service.http_port}, "
                + (f"HL7 on port {service.hl7_port}, " if service.hl7_port is not None else "")
                + f"{config.workers} worker(s), "
                f"data in {config.data_dir}"
            )
        service.wait()
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("stopped")


@app.command("serve")
def serve(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Where objects and the database live."
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)."
    ),
    ae_title: str | None = typer.Option(None, "--ae-title", help="Our AE title."),
    dicom_port: int | None = typer.Option(None, "--dicom-port", help="DICOM port (0: any free)."),
    http_port: int | None = typer.Option(None, "--http-port", help="HTTP port (0: any free)."),
    http_host: str | None = typer.Option(None, "--http-host", help="HTTP bind address."),
    destination: list[str] = typer.Option(
        [], "--destination", help="NAME=AE@host:port to send results to (repeatable)."
    ),
    allow_ae: list[str] = typer.Option(
        [], "--allow-ae", help="Calling AE allowed to send, AET or AET@host (repeatable)."
    ),
    allow_query_ae: list[str] = typer.Option(
        [],
        "--allow-query-ae",
        help="Calling AE allowed to C-FIND/C-MOVE, AET or AET@host (repeatable; default: any).",
    ),
    stable_seconds: float | None = typer.Option(
        None, "--stable-seconds", help="A study is complete after this long without new instances."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Worker threads."),
    receivers: int | None = typer.Option(
        None,
        "--receivers",
        min=1,
        max=64,
        help="Processes receiving on the DICOM port (sharing one listening socket; default 1).",
    ),
    retry_for: str | None = typer.Option(
        None,
        "--retry-for",
        help="How long a failing job keeps retrying from its first attempt (default 24h).",
    ),
    max_attempts: int | None = typer.Option(
        None, "--max-attempts", help="Also dead-letter after this many attempts (default: none)."
    ),
    lease_seconds: float | None = typer.Option(None, "--lease-seconds", help="Job lease length."),
    retry_base_seconds: float | None = typer.Option(
        None, "--retry-base-seconds", help="First retry delay; doubles each attempt."
    ),
    explain: bool | None = typer.Option(None, "--explain/--no-explain", help="Compute heatmaps."),
    pdf_report: bool | None = typer.Option(
        None,
        "--pdf-report/--no-pdf-report",
        help="Also send a PDF report per study (Encapsulated PDF, modality DOC).",
    ),
    broker: str | None = typer.Option(
        None, "--broker", help="Celery broker URL to wake `overread worker` processes."
    ),
    fhir_endpoint: list[str] = typer.Option(
        [],
        "--fhir-endpoint",
        help="URL or NAME=URL to post FHIR DiagnosticReports to (repeatable).",
    ),
    hl7_endpoint: list[str] = typer.Option(
        [], "--hl7-endpoint", help="HOST:PORT or NAME=HOST:PORT to send ORU^R01 to (repeatable)."
    ),
    hl7_listen: int | None = typer.Option(
        None, "--hl7-listen", help="MLLP port taking HL7 orders (ORM^O01, OMI^O23; 0: any free)."
    ),
    stow_endpoint: list[str] = typer.Option(
        [],
        "--stow-endpoint",
        help="DICOMweb root URL or NAME=URL to store results on with STOW-RS (repeatable).",
    ),
    model_signing_key_file: Path | None = typer.Option(
        None, "--model-signing-key-file", help="Refuse model packages not signed with this key."
    ),
    dicom_tls_cert: Path | None = typer.Option(
        None, "--dicom-tls-cert", help="PEM certificate: the DICOM port speaks TLS only."
    ),
    dicom_tls_key: Path | None = typer.Option(
        None, "--dicom-tls-key", help="PEM private key of --dicom-tls-cert."
    ),
    dicom_tls_ca: Path | None = typer.Option(
        None, "--dicom-tls-ca", help="PEM CA(s): peers must present a certificate they signed."
    ),
    triage_interval: float | None = typer.Option(
        None,
        "--triage-interval",
        min=0,
        help="Seconds between alert sweeps and worklist rescoring (default 15; 0: none).",
    ),
) -> None:
    """Run the gateway: DICOM SCP, study assembly, routing, workers and the HTTP API."""
    config = service_settings(
        data_dir,
        database_url,
        ae_title=ae_title,
        dicom_port=dicom_port,
        http_port=http_port,
        http_host=http_host,
        destinations=destination,
        allow_ae=allow_ae,
        allow_query_ae=allow_query_ae,
        stable_seconds=stable_seconds,
        workers=workers,
        dicom_receivers=receivers,
        max_attempts=max_attempts,
        retry_for_seconds=None if retry_for is None else parse_duration(retry_for),
        lease_seconds=lease_seconds,
        retry_base_seconds=retry_base_seconds,
        explain=explain,
        pdf_report=pdf_report,
        broker_url=broker,
        fhir_endpoints=fhir_endpoint or None,
        hl7_endpoints=hl7_endpoint or None,
        hl7_listen_port=hl7_listen,
        stow_endpoints=stow_endpoint or None,
        model_signing_key_file=model_signing_key_file,
        dicom_tls_cert_file=dicom_tls_cert,
        dicom_tls_key_file=dicom_tls_key,
        dicom_tls_ca_file=dicom_tls_ca,
    )
    _run_until_signalled(config, worker_only=False, triage_interval=triage_interval)


@app.command("worker")
def worker(
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The gateway's data dir."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL."),
    workers: int | None = typer.Option(None, "--workers", help="Worker threads."),
    lease_seconds: float | None = typer.Option(None, "--lease-seconds", help="Job lease length."),
    retry_base_seconds: float | None = typer.Option(
        None, "--retry-base-seconds", help="First retry delay; doubles each attempt."
    ),
    retry_for: str | None = typer.Option(
        None,
        "--retry-for",
        help="How long a failing job keeps retrying from its first attempt (default 24h).",
    ),
    max_attempts: int | None = typer.Option(
        None, "--max-attempts", help="Also dead-letter after this many attempts (default: none)."
    ),
    poll_seconds: float | None = typer.Option(
        None, "--poll-seconds", help="How often idle workers look for jobs unprompted."
    ),
    broker: str | None = typer.Option(
        None, "--broker", help="Celery broker URL to take wake-ups from (amqp://...)."
    ),
    explain: bool | None = typer.Option(None, "--explain/--no-explain", help="Compute heatmaps."),
    pdf_report: bool | None = typer.Option(
        None,
        "--pdf-report/--no-pdf-report",
        help="Also send a PDF report per study (Encapsulated PDF, modality DOC).",
    ),
    fhir_endpoint: list[str] = typer.Option(
        [],
        "--fhir-endpoint",
        help="URL or NAME=URL to post FHIR DiagnosticReports to (repeatable).",
    ),
    hl7_endpoint: list[str] = typer.Option(
        [], "--hl7-endpoint", help="HOST:PORT or NAME=HOST:PORT to send ORU^R01 to (repeatable)."
    ),
    stow_endpoint: list[str] = typer.Option(
        [],
        "--stow-endpoint",
        help="DICOMweb root URL or NAME=URL to store results on with STOW-RS (repeatable).",
    ),
    model_signing_key_file: Path | None = typer.Option(
        None, "--model-signing-key-file", help="Refuse model packages not signed with this key."
    ),
) -> None:
    """Run job workers only, against the same database and data dir as ``overread serve``."""
    config = service_settings(
        data_dir,
        database_url,
        workers=workers,
        lease_seconds=lease_seconds,
        retry_base_seconds=retry_base_seconds,
        retry_for_seconds=None if retry_for is None else parse_duration(retry_for),
        max_attempts=max_attempts,
        poll_seconds=poll_seconds,
        broker_url=broker,
        explain=explain,
        pdf_report=pdf_report,
        fhir_endpoints=fhir_endpoint or None,
        hl7_endpoints=hl7_endpoint or None,
        stow_endpoints=stow_endpoint or None,
        model_signing_key_file=model_signing_key_file,
    )
    _run_until_signalled(config, worker_only=True)
