"""What changed between a prior study's AI findings and the current study's.

A reader comparing two chest films asks of each finding: is it new, has it gone,
is it more or less likely than last time, has the call changed? :func:`compare_findings`
answers that from the two studies' stored findings, one :class:`FindingChange` per
label either study scored. A probability move counts only beyond a stated margin
(:data:`DEFAULT_MARGIN`), so calibration noise between two films of the same chest
does not read as progression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from overread.errors import OverreadError
from overread.results import Decision, FindingResult

#: A probability must move by more than this (absolute) to count as up or down.
DEFAULT_MARGIN = 0.10


class ChangeKind(StrEnum):
    """How one finding changed from the prior study to the current one.

    ``NEW`` and ``RESOLVED`` are the positive call appearing or disappearing;
    ``DECISION_CHANGED`` is any other change of call (to or from indeterminate);
    ``PROBABILITY_UP``/``PROBABILITY_DOWN`` a move beyond the margin with the same
    call; ``UNCHANGED`` neither; ``NOT_IN_PRIOR``/``NOT_IN_CURRENT`` a label only one
    of the two studies' models scored (nothing can be said of its change).
    """

    NEW = "new"
    RESOLVED = "resolved"
    DECISION_CHANGED = "decision changed"
    PROBABILITY_UP = "probability up"
    PROBABILITY_DOWN = "probability down"
    UNCHANGED = "unchanged"
    NOT_IN_PRIOR = "not in prior"
    NOT_IN_CURRENT = "not in current"


#: The order a reader wants them in: what needs attention first.
_ORDER = {kind: rank for rank, kind in enumerate(ChangeKind)}


@dataclass(frozen=True)
class FindingChange:
    """One finding in both studies and how it changed.

    Attributes
    ----------
    probability_delta
        Current minus prior probability; ``None`` when one side is missing.
    probability_moved
        Whether the probability moved by more than the margin, whatever the call did.
    """

    label: str
    kind: ChangeKind
    current_probability: float | None
    prior_probability: float | None
    current_decision: Decision | None
    prior_decision: Decision | None
    probability_delta: float | None
    probability_moved: bool


def _change(
    label: str, current: FindingResult | None, prior: FindingResult | None, margin: float
) -> FindingChange:
    if current is None or prior is None:
        kind = ChangeKind.NOT_IN_CURRENT if current is None else ChangeKind.NOT_IN_PRIOR
        return FindingChange(
            label=label,
            kind=kind,
            current_probability=current.probability if current else None,
            prior_probability=prior.probability if prior else None,
            current_decision=current.decision if current else None,
            prior_decision=prior.decision if prior else None,
            probability_delta=None,
            probability_moved=False,
        )
    delta = current.probability - prior.probability
    moved = abs(delta) > margin
    was_positive = prior.decision is Decision.POSITIVE
    is_positive = current.decision is Decision.POSITIVE
    if is_positive and not was_positive and prior.decision is Decision.NEGATIVE:
        kind = ChangeKind.NEW
    elif was_positive and current.decision is Decision.NEGATIVE:
        kind = ChangeKind.RESOLVED
    elif current.decision is not prior.decision:
        kind = ChangeKind.DECISION_CHANGED
    elif moved:
        kind = ChangeKind.PROBABILITY_UP if delta > 0 else ChangeKind.PROBABILITY_DOWN
    else:
        kind = ChangeKind.UNCHANGED
    return FindingChange(
        label=label,
        kind=kind,
        current_probability=current.probability,
        prior_probability=prior.probability,
        current_decision=current.decision,
        prior_decision=prior.decision,
        probability_delta=round(delta, 6),
        probability_moved=moved,
    )


def compare_findings(
    current: Sequence[FindingResult],
    prior: Sequence[FindingResult],
    *,
    margin: float = DEFAULT_MARGIN,
) -> list[FindingChange]:
    """The change of every finding from ``prior`` to ``current``, most notable first.

    Parameters
    ----------
    current, prior
        The two studies' findings (one per label; a repeated label keeps its last).
    margin
        The absolute probability change, in [0, 1), a move must exceed to count as up
        or down; below it the finding is ``UNCHANGED`` unless its call changed.

    Returns
    -------
    list of FindingChange
        Ordered by kind (new, resolved, decision changed, up, down, unchanged, then
        labels only one study scored), then by the larger probability, then label.

    Raises
    ------
    OverreadError
        If ``margin`` is outside [0, 1).
    """
    if not 0.0 <= margin < 1.0:
        raise OverreadError(f"the change margin must lie in [0, 1), not {margin}")
    now = {f.label: f for f in current}
    before = {f.label: f for f in prior}
    labels = list(now) + [label for label in before if label not in now]
    changes = [_change(label, now.get(label), before.get(label), margin) for label in labels]

    def order(change: FindingChange) -> tuple[int, float, str]:
        top = max(change.current_probability or 0.0, change.prior_probability or 0.0)
        return (_ORDER[change.kind], -top, change.label)

    return sorted(changes, key=order)


__all__ = ["DEFAULT_MARGIN", "ChangeKind", "FindingChange", "compare_findings"]
