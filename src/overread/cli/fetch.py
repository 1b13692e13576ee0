"""``overread fetch``: pull studies from a PACS into the running gateway.

C-MOVE (the default) asks the PACS to send the study to the gateway's own AE title,
so the PACS must list that AE title with the gateway's host and DICOM port; the
study then arrives by C-STORE like any other. C-GET, for a PACS that cannot connect
back, brings the instances on this command's own association and hands them on to
the gateway by C-STORE. Either way the study is ingested, assembled and analysed as
if a modality had sent it, and the command prints what the gateway now holds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from overread.cli.app import app
from overread.cli.options import service_settings
from overread.errors import ConfigError

if TYPE_CHECKING:
    from overread.service.config import QueryPeer, ServiceConfig
    from overread.service.retrieve import RetrieveOutcome, StudyRecord


def _peer(text: str, config: ServiceConfig) -> QueryPeer:
    from overread.service.config import QueryPeer

    if "@" in text:
        return QueryPeer.parse(text)
    for peer in config.query_peers:
        if peer.name == text:
            return peer
    known = ", ".join(p.name for p in config.query_peers) or "none configured"
    raise ConfigError(f"--from {text!r}: give AE@host:port or a query peer's name ({known})")


def _targets(
    peer: QueryPeer,
    config: ServiceConfig,
    studies: list[str],
    patient: str | None,
    priors: bool,
    timeout: float,
) -> list[str]:
    """The Study Instance UIDs to fetch: those named, and the patient's (prior) studies."""
    from overread.service.retrieve import find_studies, prior_studies

    wanted = list(studies)
    if patient is None and not priors:
        return wanted
    if priors and patient is None and not studies:
        raise ConfigError("--priors needs --patient ID or --study UID")
    before = None
    exclude = None
    if priors and studies:
        described = _described(peer, config, studies[0], timeout)
        if not described:
            raise ConfigError(f"study {studies[0]} is not on {peer.ae_title}: no priors to find")
        current = described[0]
        patient = patient or current.patient_id
        before, exclude = current.study_date, current.study_instance_uid
    if not patient:
        raise ConfigError("--priors: the study names no Patient ID; give --patient ID")
    if priors:
        found = prior_studies(
            patient,
            before=before,
            peers=[peer],
            exclude_study_uid=exclude,
            calling_ae=config.ae_title,
            timeout=timeout,
        )
        if found.failures:
            raise ConfigError(found.failures[0].reason)
        records = list(found.studies)
    else:
        records = find_studies(peer, calling_ae=config.ae_title, timeout=timeout, PatientID=patient)
    for record in records:
        if record.study_instance_uid not in wanted:
            wanted.append(record.study_instance_uid)
    return wanted


def _described(
    peer: QueryPeer, config: ServiceConfig, study: str, timeout: float
) -> list[StudyRecord]:
    from overread.service.retrieve import find_studies

    return find_studies(peer, calling_ae=config.ae_title, timeout=timeout, StudyInstanceUID=study)[
        :1
    ]


def _by_get(
    peer: QueryPeer, config: ServiceConfig, study: str, gateway: str | None, timeout: float
) -> RetrieveOutcome:
    """C-GET ``study`` into a scratch folder, then C-STORE it to the gateway."""
    from overread.service.config import Destination
    from overread.service.retrieve import QueryRetrieveError, get_study
    from overread.service.scu import send_files

    target = Destination.parse(gateway or f"{config.ae_title}@127.0.0.1:{config.dicom_port}")
    with tempfile.TemporaryDirectory(prefix="overread-fetch-") as scratch:
        files: list[Path] = []

        def keep(data: bytes) -> None:
            path = Path(scratch) / f"{len(files):06d}.dcm"
            path.write_bytes(data)
            files.append(path)

        outcome = get_study(peer, study, keep, calling_ae=config.ae_title, timeout=timeout)
        statuses = send_files(
            files,
            ae_title=target.ae_title,
            host=target.host,
            port=target.port,
            calling_ae=config.ae_title,
            timeout=timeout,
        )
    refused = [s for s in statuses if not s.ok]
    if refused:
        raise QueryRetrieveError(
            f"C-GET of study {study}: {len(refused)} of {len(statuses)} instance(s) not "
            f"accepted by the gateway {target.ae_title}@{target.host}:{target.port}: "
            f"{refused[0].error or f'status 0x{refused[0].status or 0:04X}'}"
        )
    return outcome


def _arrived(config: ServiceConfig, study: str) -> str:
    """What the gateway's database holds of ``study``, in one line."""
    from sqlalchemy import select

    from overread.service.db import Database, Instance

    try:
        database = Database(config.database_url, create=False)
        with database.session() as session:
            rows = session.execute(
                select(Instance.series_instance_uid, Instance.modality).where(
                    Instance.study_instance_uid == study
                )
            ).all()
    except Exception as exc:  # the gateway's database may be elsewhere
        return f"the gateway's database could not be read ({type(exc).__name__})"
    series = {r[0] for r in rows}
    modalities = ",".join(sorted({r[1] for r in rows if r[1]})) or "-"
    return f"{len(rows)} instance(s) in {len(series)} series ({modalities}) stored"


@app.command("fetch")
def fetch(
    source: str = typer.Option(
        ..., "--from", help="The PACS: AE@host:port, or the name of a configured query peer."
    ),
    study: list[str] = typer.Option([], "--study", help="Study Instance UID (repeatable)."),
    method: str = typer.Option(
        "move", "--method", help="move (the PACS sends to our AE title) or get (PACS cannot)."
    ),
    patient: str | None = typer.Option(
        None, "--patient", help="Patient ID: fetch the patient's studies (with --priors: priors)."
    ),
    priors: bool = typer.Option(
        False, "--priors", help="Only studies dated before --study's (or all of --patient's)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The gateway's data dir."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL."),
    ae_title: str | None = typer.Option(
        None,
        "--ae-title",
        help="The gateway's AE title (the C-MOVE destination; default: settings).",
    ),
    gateway: str | None = typer.Option(
        None,
        "--gateway",
        help="Where C-GET hands the study on, AE@host:port (default: the gateway on 127.0.0.1).",
    ),
    timeout: float = typer.Option(120.0, "--timeout", help="Network timeout in seconds."),
) -> None:
    """Pull studies from a PACS into the running gateway by C-MOVE or C-GET; exit 1 if any failed."""
    from overread.service.retrieve import (
        QueryRetrieveError,
        RetrieveMethod,
        move_study,
    )

    try:
        chosen = RetrieveMethod(method.strip().lower())
    except ValueError:
        raise ConfigError(f"--method {method!r}: expected move or get") from None
    config = service_settings(data_dir, database_url, ae_title=ae_title)
    peer = _peer(source, config)
    if not study and patient is None:
        raise ConfigError("give --study UID (repeatable) or --patient ID")
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        targets = _targets(peer, config, study, patient, priors, timeout)
    except QueryRetrieveError as exc:
        raise ConfigError(str(exc)) from None
    if not targets:
        typer.echo(f"no study to fetch on {where}")
        return
    failed = 0
    for uid in targets:
        try:
            if chosen is RetrieveMethod.MOVE:
                outcome = move_study(
                    peer, uid, config.ae_title, calling_ae=config.ae_title, timeout=timeout
                )
            else:
                outcome = _by_get(peer, config, uid, gateway, timeout)
        except QueryRetrieveError as exc:
            failed += 1
            typer.echo(f"error: {exc}", err=True)
            continue
        if not outcome.ok:
            failed += 1
        typer.echo(
            f"study {uid} from {where} by C-{chosen.value.upper()}: "
            f"{outcome.completed} completed, {outcome.failed} failed, {outcome.warning} warning; "
            f"{_arrived(config, uid)}"
        )
    typer.echo(f"{len(targets) - failed}/{len(targets)} study(ies) fetched into {config.ae_title}")
    if failed:
        raise typer.Exit(1)
