"""What a nodule means: a Lung-RADS-style size/density category, and growth.

Categories follow the size thresholds of Lung-RADS v2022 for a baseline screening
CT, simplified (see docs/ct.md): the size is the nodule's *longest* diameter in 3-D
(Lung-RADS uses the mean of two axial diameters), the solid component's size is
the diameter of the sphere with the solid voxels' volume, and no other feature
(location, calcification, morphology) is looked at. A category is a reading aid, not
a management recommendation.

* solid: < 6 mm ``2``; 6 to < 8 mm ``3``; 8 to < 15 mm ``4A``; >= 15 mm ``4B``
* part-solid: < 6 mm total ``2``; solid component < 6 mm ``3``; 6 to < 8 mm ``4A``;
  >= 8 mm ``4B``
* ground-glass: < 30 mm ``2``; >= 30 mm ``3``

Density: ``solid`` when at least :data:`SOLID_FRACTION` of the nodule's voxels reach
the package's ``solid_hu``; ``part-solid`` when a solid core of at least
:data:`CORE_FRACTION` does; ``ground-glass`` otherwise.

Growth compares each nodule with the nodules of the latest prior result of the same
model, matched by the nearest centre in patient coordinates (no registration: the
prior must be in the same frame, within :data:`MATCH_MM` or the prior's diameter).
An increase of the longest diameter above :data:`GROWTH_MM` is growth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from overread.results import Region

SOLID_FRACTION = 0.8
CORE_FRACTION = 0.05
GROWTH_MM = 1.5
MATCH_MM = 10.0


def density_of(solid_fraction: float) -> str:
    """``solid``, ``part-solid`` or ``ground-glass`` from the solid voxels' fraction."""
    if solid_fraction >= SOLID_FRACTION:
        return "solid"
    if solid_fraction >= CORE_FRACTION:
        return "part-solid"
    return "ground-glass"


def solid_diameter_mm(volume_mm3: float, solid_fraction: float) -> float:
    """Diameter of the sphere with the solid component's volume."""
    solid = max(0.0, volume_mm3 * solid_fraction)
    return float((6.0 * solid / math.pi) ** (1.0 / 3.0))


def categorise(density: str, diameter_mm: float, solid_mm: float = 0.0) -> str:
    """The Lung-RADS-style category (``2``, ``3``, ``4A``, ``4B``) with its reason."""
    if density == "solid":
        if diameter_mm < 6:
            return "2 (solid < 6 mm)"
        if diameter_mm < 8:
            return "3 (solid 6 to < 8 mm)"
        if diameter_mm < 15:
            return "4A (solid 8 to < 15 mm)"
        return "4B (solid >= 15 mm)"
    if density == "part-solid":
        if diameter_mm < 6:
            return "2 (part-solid < 6 mm)"
        if solid_mm < 6:
            return "3 (part-solid, solid component < 6 mm)"
        if solid_mm < 8:
            return "4A (part-solid, solid component 6 to < 8 mm)"
        return "4B (part-solid, solid component >= 8 mm)"
    if density == "ground-glass":
        if diameter_mm < 30:
            return "2 (ground-glass < 30 mm)"
        return "3 (ground-glass >= 30 mm)"
    raise ValueError(f"unknown density {density!r}")


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))))


def compare_with_prior(
    regions: Sequence[Region], prior: Sequence[Region], *, prior_study: str = ""
) -> list[Region]:
    """``regions`` with ``growth`` filled in against the nodules of a prior result.

    Each prior nodule is matched at most once (closest pairs first). A nodule with no
    match is ``new``; every nodule gets ``growth`` (there is a prior).
    """
    pairs = sorted(
        (_distance(r.centre_mm, p.centre_mm), i, j)
        for i, r in enumerate(regions)
        for j, p in enumerate(prior)
    )
    matched: dict[int, int] = {}
    used: set[int] = set()
    for distance, i, j in pairs:
        if i in matched or j in used:
            continue
        if distance <= max(MATCH_MM, prior[j].longest_diameter_mm):
            matched[i] = j
            used.add(j)
    out: list[Region] = []
    for i, region in enumerate(regions):
        growth: dict[str, Any] = {"prior_study": prior_study}
        if i not in matched:
            growth.update(status="new", prior_diameter_mm=None, change_mm=None)
        else:
            before = prior[matched[i]]
            change = region.longest_diameter_mm - before.longest_diameter_mm
            volume_change = (
                100.0 * (region.volume_mm3 - before.volume_mm3) / before.volume_mm3
                if before.volume_mm3 > 0
                else None
            )
            growth.update(
                status="growing" if change > GROWTH_MM else "stable",
                prior_diameter_mm=round(before.longest_diameter_mm, 3),
                change_mm=round(change, 3),
                prior_volume_mm3=round(before.volume_mm3, 3),
                volume_change_percent=None if volume_change is None else round(volume_change, 2),
                distance_mm=round(_distance(region.centre_mm, before.centre_mm), 3),
            )
        out.append(replace(region, growth=growth))
    return out


def growth_text(growth: Mapping[str, Any] | None) -> str:
    """One phrase for a report: ``new``, ``stable (+0.4 mm)``, ``growing (+2.1 mm)``."""
    if not growth:
        return "no prior"
    status = str(growth.get("status") or "")
    change = growth.get("change_mm")
    return status if change is None else f"{status} ({float(change):+.1f} mm)"


__all__ = [
    "CORE_FRACTION",
    "GROWTH_MM",
    "MATCH_MM",
    "SOLID_FRACTION",
    "categorise",
    "compare_with_prior",
    "density_of",
    "growth_text",
    "solid_diameter_mm",
]
