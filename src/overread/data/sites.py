"""Which site a study is from, for per-site calibration: one rule for fitting a site's
calibration on a cohort and for choosing it for a study in the running service.

The rule (``[service.site_calibration]`` ``source`` and ``sites``):

* a study's *source value* is one fact about it: its Institution Name
  (``institution``), its Station Name (``station``) or the calling AE title that sent
  it (``calling_ae``); never the first of several that happens to be set;
* the ``sites`` mapping names the site of each source value it knows (several
  stations of one hospital to one site, say), compared ignoring case and runs of
  spaces;
* a source value the mapping does not name is *unmapped*: it is never taken for a
  site name as it is. Fitting refuses a cohort with unmapped values (naming them);
  the service gives such a study the package's global calibration, logs a warning,
  counts it and records why in the result and its audit record.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class SiteSource(enum.StrEnum):
    """Which header or connection fact names a study's site."""

    INSTITUTION = "institution"
    STATION = "station"
    CALLING_AE = "calling_ae"


def site_key(name: str) -> str:
    """How site names and source values are compared: case and runs of spaces ignored
    (DICOM pads)."""
    return " ".join(str(name).split()).casefold()


@dataclass(frozen=True)
class SiteMatch:
    """A study's site under the rule (see the module).

    Attributes
    ----------
    source
        Where the value came from.
    value
        The study's source value, spaces normalised (``""``: the study has none).
    site
        The site the mapping names for it; ``None`` when the value is empty or unmapped.
    """

    source: SiteSource
    value: str
    site: str | None

    @property
    def unmapped(self) -> bool:
        """Whether the study has a source value that the mapping does not name."""
        return bool(self.value) and self.site is None


def source_value(
    source: SiteSource | str, *, institution: str = "", station: str = "", calling_ae: str = ""
) -> str:
    """The study's value of ``source``, spaces normalised (``""`` when it has none)."""
    raw = {
        SiteSource.INSTITUTION: institution,
        SiteSource.STATION: station,
        SiteSource.CALLING_AE: calling_ae,
    }[SiteSource(source)]
    return " ".join(str(raw or "").split())


def match_site(
    source: SiteSource | str,
    sites: Mapping[str, str],
    *,
    institution: str = "",
    station: str = "",
    calling_ae: str = "",
) -> SiteMatch:
    """The study's site: its ``source`` value looked up in ``sites`` (see the module)."""
    chosen = SiteSource(source)
    value = source_value(chosen, institution=institution, station=station, calling_ae=calling_ae)
    wanted = site_key(value)
    site = next((s for v, s in sites.items() if value and site_key(v) == wanted), None)
    return SiteMatch(source=chosen, value=value, site=site)


def ambiguous_values(sites: Mapping[str, str]) -> str | None:
    """Why ``sites`` cannot be used, in one line, or ``None``: two of its source values
    that compare equal (:func:`site_key`) but name different sites, which the lookup
    could only settle by order."""
    seen: dict[str, tuple[str, str]] = {}
    for value, site in sites.items():
        key = site_key(value)
        if key in seen and site_key(seen[key][1]) != site_key(site):
            first, other = seen[key]
            return (
                f"sites {first!r} and {value!r} are the same value (case and spaces are "
                f"ignored) but name different sites, {other!r} and {site!r}; keep one"
            )
        seen.setdefault(key, (value, site))
    return None


def mapped_sites(sites: Mapping[str, str]) -> list[str]:
    """The site names a mapping can give, sorted (each once)."""
    found: dict[str, str] = {}
    for site in sites.values():
        found.setdefault(site_key(site), site)
    return sorted(found.values())


def unmapped_values(matches: Iterable[SiteMatch]) -> list[str]:
    """The distinct source values among ``matches`` that the mapping does not name."""
    found: dict[str, str] = {}
    for match in matches:
        if match.unmapped:
            found.setdefault(site_key(match.value), match.value)
    return sorted(found.values())


__all__ = [
    "SiteMatch",
    "SiteSource",
    "ambiguous_values",
    "mapped_sites",
    "match_site",
    "site_key",
    "source_value",
    "unmapped_values",
]
