"""What the demo reads back: the counts from the database, the PACS and the modality,
the worklist's top rows, and the final checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import distinct, func, select

from overread.demo.cohort import CohortFeed
from overread.demo.modality import DemoModality
from overread.demo.options import DemoCheck, DemoProgress, DemoSummary
from overread.harness import PacsLike, sr_studies

if TYPE_CHECKING:
    from overread.harness.gateway import Gateway

#: Job states after which nothing more happens without an operator.
_TERMINAL_STATES = frozenset({"succeeded", "dead_lettered", "cancelled"})


def snapshot(
    service: Gateway,
    pacs: PacsLike,
    modality: DemoModality | None,
    feed: CohortFeed,
    progress: DemoProgress,
) -> DemoProgress:
    """Refresh ``progress`` from the database, the PACS, the modality and the feed."""
    from overread.service.db import Job, Result, Study
    from overread.triage import Alert, WorklistItem

    with service.database.session() as session:

        def count(what: Any, where: Any = None) -> int:
            query = select(what) if where is None else select(what).where(where)
            return int(session.scalar(query) or 0)

        progress.received = count(func.count(Study.id))
        progress.read = count(func.count(distinct(Result.study_instance_uid)))
        progress.failed = count(
            func.count(Job.id), where=(Job.kind == "infer") & (Job.state == "dead_lettered")
        )
        progress.jobs_active = count(func.count(Job.id), where=Job.state.not_in(_TERMINAL_STATES))
        progress.critical = count(func.count(WorklistItem.id), where=WorklistItem.has_critical)
        progress.alerts = count(func.count(Alert.id))
    counts = pacs.counts()
    progress.srs_at_pacs, progress.objects_at_pacs = counts.srs, counts.objects
    progress.generated = feed.generated
    if modality is not None:
        progress.sent_studies = modality.sent_studies
        progress.sent_images = modality.sent_images
        progress.send_failures = modality.failures
    return progress


def worklist_top(service: Gateway, summary: DemoSummary, top: int = 10) -> DemoSummary:
    """Fill in the worklist's top rows and its size."""
    from overread.triage import query_worklist

    with service.database.session() as session:
        page = query_worklist(session, limit=top)
        summary.worklist_total = page.total
        summary.worklist = [
            {
                "score": round(item.score, 1),
                "department": item.department or "-",
                "top_finding": _top_finding(item.findings),
                "critical": list(item.critical_findings),
                "study_instance_uid": item.study_instance_uid,
            }
            for item in page.items
        ]
    return summary


def final_checks(service: Gateway, modality: DemoModality, summary: DemoSummary) -> list[DemoCheck]:
    """Every study sent, each with an SR at the PACS and a worklist row; the audit verifies."""
    from overread.audit import verify_chain
    from overread.triage import WorklistItem

    progress = summary.progress
    sent = set(modality.sent_uids)
    with_sr = sr_studies(summary.pacs_dir)
    with service.database.session() as session:
        listed = set(session.scalars(select(WorklistItem.study_instance_uid)))
    verdict = verify_chain(service.database.engine)

    def missing(have: set[str]) -> str:
        gone = sorted(sent - have)
        return f"missing {len(gone)}, e.g. {gone[0]}" if gone else f"{len(sent)} of {len(sent)}"

    summary.checks = [
        DemoCheck(
            "every study sent",
            progress.sent_studies == progress.studies and not progress.send_failures,
            f"{progress.sent_studies} of {progress.studies}, {progress.send_failures} failed",
        ),
        DemoCheck("an SR at the PACS for every study", sent <= with_sr, missing(with_sr)),
        DemoCheck("every study on the worklist", sent <= listed, missing(listed)),
        DemoCheck("the audit chain verifies", verdict.ok, verdict.summary()),
    ]
    return summary.checks


def _top_finding(findings: list[Any]) -> str:
    best: tuple[float, str] | None = None
    for finding in findings or []:
        if isinstance(finding, dict) and "label" in finding:
            candidate = (float(finding.get("probability") or 0.0), str(finding["label"]))
            if best is None or candidate > best:
                best = candidate
    return f"{best[1]} {best[0]:.2f}" if best else "-"


__all__ = ["final_checks", "snapshot", "worklist_top"]
