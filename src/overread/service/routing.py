"""Routing: which models run on a study, and where their results go.

A :class:`~overread.service.config.Route` matches a study when at least one of its
instances satisfies every condition the rule gives. Every matching rule applies
(highest ``priority`` first); a model alias named by several rules runs once, with
the highest priority and the union of their destinations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from overread.service.config import Route
from overread.service.db import Instance


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


@dataclass
class RoutedModel:
    """One model to run on a study, and where its results go."""

    model: str
    priority: int
    routes: list[str] = field(default_factory=list)
    destinations: set[str] | None = field(default_factory=set)
    """Destination names; ``None`` means every configured destination."""


def _in(value: str, allowed: list[str] | None) -> bool:
    if allowed is None:
        return True
    value = value.strip().upper()
    return any(value == a.strip().upper() for a in allowed)


def route_matches(route: Route, facts: InstanceFacts) -> bool:
    """Whether one instance satisfies every condition of ``route``."""
    if not (
        _in(facts.modality, route.modality)
        and _in(facts.body_part, route.body_part)
        and _in(facts.view_position, route.view_position)
        and _in(facts.sop_class_uid, route.sop_class_uid)
        and _in(facts.calling_ae, route.calling_ae)
        and _in(facts.institution, route.institution)
    ):
        return False
    if route.series_description is not None:
        return re.search(route.series_description, facts.series_description) is not None
    return True


class Router:
    """Applies the configured rules to a study's instances."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: -r.priority)

    def matching_routes(self, instances: Iterable[InstanceFacts]) -> list[Route]:
        """The rules matched by at least one instance, highest priority first."""
        facts = list(instances)
        return [r for r in self.routes if any(route_matches(r, f) for f in facts)]

    def plan(self, instances: Iterable[InstanceFacts]) -> list[RoutedModel]:
        """The models to run on a study made of ``instances``."""
        planned: dict[str, RoutedModel] = {}
        for route in self.matching_routes(instances):
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
        """Whether a matching rule asks for completion when the association ends."""
        return any(r.complete_on_release for r in self.matching_routes(instances))


__all__ = ["InstanceFacts", "RoutedModel", "Router", "route_matches"]
