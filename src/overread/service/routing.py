"""Routing: which models run on a study, and where their results go.

A :class:`~overread.service.config.Route` matches a study when at least one of its
instances satisfies every condition the rule gives. How matching rules combine is the
configuration's :class:`~overread.service.config.RoutingMode`:

* ``all`` (the default): every matching rule applies (highest ``priority`` first); a
  model alias named by several rules runs once, with the highest priority and the
  union of their destinations;
* ``first-match``: the first matching rule, highest ``priority`` then file order,
  applies alone.

A rule marked ``fallback`` applies only when no other rule matches. A condition on an
attribute the instance lacks (a missing Body Part Examined, say) is false unless the
rule lists ``""`` for it: a missing tag never raises and never matches by accident.
:meth:`Router.explain` says, condition by condition, why each rule matched or not
(``overread route --explain FILE``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from overread.imaging import ImageMetadata
from overread.service.config import Route, RoutingMode
from overread.service.db import Instance
from overread.service.ingest import InstanceColumns


@dataclass(frozen=True)
class InstanceFacts:
    """The attributes of one instance that rules look at."""

    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    sop_class_uid: str = ""
    calling_ae: str = ""
    institution: str = ""
    series_description: str = ""

    @classmethod
    def of(cls, instance: Instance) -> InstanceFacts:
        """The facts of a stored instance row."""
        return cls(
            modality=instance.modality,
            body_part=instance.body_part,
            view_position=instance.view_position,
            sop_class_uid=instance.sop_class_uid,
            calling_ae=instance.calling_ae,
            institution=instance.institution,
            series_description=instance.series_description,
        )

    @classmethod
    def of_header(cls, header: ImageMetadata, *, calling_ae: str = "") -> InstanceFacts:
        """The facts ingest would store for ``header`` (same clipping and case)."""
        columns = InstanceColumns.of(header)
        return cls(
            modality=columns.modality,
            body_part=columns.body_part,
            view_position=columns.view_position,
            sop_class_uid=columns.sop_class_uid,
            calling_ae=calling_ae.strip(),
            institution=columns.institution,
            series_description=columns.series_description,
        )


@dataclass
class RoutedModel:
    """One model to run on a study, and where its results go."""

    model: str
    priority: int
    routes: list[str] = field(default_factory=list)
    destinations: set[str] | None = field(default_factory=set)
    """Destination names; ``None`` means every configured destination."""


#: Each list condition of a rule: (field of Route and InstanceFacts, DICOM keyword).
_LIST_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("modality", "Modality"),
    ("body_part", "BodyPartExamined"),
    ("view_position", "ViewPosition"),
    ("sop_class_uid", "SOPClassUID"),
    ("calling_ae", "calling AE title"),
    ("institution", "InstitutionName"),
)


@dataclass(frozen=True)
class ConditionCheck:
    """One condition of one rule, evaluated on one instance."""

    attribute: str
    """The DICOM keyword (or ``calling AE title``) the condition reads."""
    value: str
    """The instance's value; ``""`` when the attribute is missing or empty."""
    wanted: str
    """What the rule asks for: a comma-separated list or ``/regex/``."""
    satisfied: bool

    @property
    def reason(self) -> str:
        """One line a person can act on."""
        shown = repr(self.value) if self.value else "missing"
        verb = "is" if self.satisfied else "is not"
        if self.wanted.startswith("/"):
            verb = "matches" if self.satisfied else "does not match"
            return f"{self.attribute} {shown} {verb} {self.wanted}"
        hint = ""
        if not self.value and not self.satisfied:
            hint = ' (list "" to match a missing value)'
        return f"{self.attribute} {shown} {verb} one of [{self.wanted}]{hint}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "value": self.value,
            "wanted": self.wanted,
            "satisfied": self.satisfied,
            "reason": self.reason,
        }


def _in(value: str, allowed: list[str]) -> bool:
    value = value.strip().upper()
    return any(value == a.strip().upper() for a in allowed)


def route_checks(route: Route, facts: InstanceFacts) -> list[ConditionCheck]:
    """Every condition ``route`` gives, evaluated on one instance."""
    checks: list[ConditionCheck] = []
    for name, keyword in _LIST_CONDITIONS:
        allowed: list[str] | None = getattr(route, name)
        if allowed is None:
            continue
        value: str = getattr(facts, name)
        checks.append(
            ConditionCheck(
                attribute=keyword,
                value=value.strip(),
                wanted=", ".join(repr(a) if a == "" else a for a in allowed),
                satisfied=_in(value, allowed),
            )
        )
    if route.series_description is not None:
        checks.append(
            ConditionCheck(
                attribute="SeriesDescription",
                value=facts.series_description,
                wanted=f"/{route.series_description}/",
                satisfied=re.search(route.series_description, facts.series_description) is not None,
            )
        )
    return checks


def route_matches(route: Route, facts: InstanceFacts) -> bool:
    """Whether one instance satisfies every condition of ``route``."""
    return all(check.satisfied for check in route_checks(route, facts))


@dataclass(frozen=True)
class RouteExplanation:
    """Why one rule applies to a study, or why not."""

    route: str
    priority: int
    fallback: bool
    matched: bool
    """At least one instance satisfies every condition."""
    applied: bool
    """The rule decides the study's models (matching is not enough in ``first-match``
    mode, or for a fallback rule when another rule matched)."""
    note: str
    instances: tuple[tuple[str, tuple[ConditionCheck, ...]], ...]
    """Per instance (its label), the rule's conditions evaluated on it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "priority": self.priority,
            "fallback": self.fallback,
            "matched": self.matched,
            "applied": self.applied,
            "note": self.note,
            "instances": [
                {"instance": label, "checks": [c.to_dict() for c in checks]}
                for label, checks in self.instances
            ],
        }


class Router:
    """Applies the configured rules to a study's instances."""

    def __init__(self, routes: Sequence[Route], mode: RoutingMode = RoutingMode.ALL) -> None:
        # sorted() is stable: rules of equal priority keep their order in the file.
        self.routes = sorted(routes, key=lambda r: -r.priority)
        self.mode = mode

    def matching_routes(self, instances: Iterable[InstanceFacts]) -> list[Route]:
        """The rules matched by at least one instance, highest priority first."""
        facts = list(instances)
        return [r for r in self.routes if any(route_matches(r, f) for f in facts)]

    def applied_routes(self, instances: Iterable[InstanceFacts]) -> list[Route]:
        """The rules that decide the study: the routing mode and fallbacks applied."""
        matched = self.matching_routes(instances)
        chosen = [r for r in matched if not r.fallback] or [r for r in matched if r.fallback]
        if self.mode is RoutingMode.FIRST_MATCH:
            return chosen[:1]
        return chosen

    def plan(self, instances: Iterable[InstanceFacts]) -> list[RoutedModel]:
        """The models to run on a study made of ``instances``."""
        planned: dict[str, RoutedModel] = {}
        for route in self.applied_routes(instances):
            for model in route.models:
                entry = planned.setdefault(model, RoutedModel(model=model, priority=route.priority))
                entry.priority = max(entry.priority, route.priority)
                entry.routes.append(route.name)
                if route.destinations is None or entry.destinations is None:
                    entry.destinations = None
                else:
                    entry.destinations.update(route.destinations)
        return list(planned.values())

    def completes_on_release(self, instances: Iterable[InstanceFacts]) -> bool:
        """Whether an applied rule asks for completion when the association ends."""
        return any(r.complete_on_release for r in self.applied_routes(instances))

    def explain(
        self, instances: Sequence[InstanceFacts], labels: Sequence[str] | None = None
    ) -> list[RouteExplanation]:
        """Every rule, in evaluation order, with why it applies to the study or not."""
        names = list(labels) if labels is not None else [str(i + 1) for i in range(len(instances))]
        if len(names) != len(instances):
            raise ValueError("one label per instance")
        applied = {r.name for r in self.applied_routes(instances)}
        matched = {r.name for r in self.matching_routes(instances)}
        first_applied = next((r.name for r in self.routes if r.name in applied), None)
        out: list[RouteExplanation] = []
        for route in self.routes:
            per_instance = tuple(
                (label, tuple(route_checks(route, facts)))
                for label, facts in zip(names, instances, strict=True)
            )
            if route.name in applied:
                note = "every condition holds on an instance"
            elif route.name not in matched:
                note = "no instance satisfies every condition"
            elif route.fallback:
                note = "matches, but a fallback applies only when no other rule matches"
            else:
                note = f"matches, but first-match mode applied {first_applied!r} before it"
            out.append(
                RouteExplanation(
                    route=route.name,
                    priority=route.priority,
                    fallback=route.fallback,
                    matched=route.name in matched,
                    applied=route.name in applied,
                    note=note,
                    instances=per_instance,
                )
            )
        return out


__all__ = [
    "ConditionCheck",
    "InstanceFacts",
    "RouteExplanation",
    "RoutedModel",
    "Router",
    "route_checks",
    "route_matches",
]
