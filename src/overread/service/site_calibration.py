"""The ``[service.site_calibration]`` settings: which site a study is from, for choosing
the model package's per-site calibration (see :mod:`overread.inference.site_calibration`).

Example ``overread.toml``::

    [service.site_calibration]
    enabled = true                    # false: every study gets the global calibration
    source = "institution"            # or "station" or "calling_ae"
    sites = {"CR01" = "Riverside Medical Centre"}   # raw value -> the package's site name

The study's site is its first image's Institution Name (``institution``), Station
Name (``station``) or the calling AE title that sent it (``calling_ae``), looked up
in ``sites``, which maps a raw value to the name the package's calibration carries
(several stations of one hospital to one site, say); names are compared ignoring
case and runs of spaces. A value ``sites`` does not map is *unmapped*, never used
as it is: the study gets the global calibration, with a warning, a count
(``overread_site_calibration_unmapped_total``) and the reason in its result and
audit record. ``overread models calibrate --site`` matches a cohort's images by the
same rule (:mod:`overread.data.sites`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from overread.data.sites import SiteMatch


class CalibrationSiteSource(enum.StrEnum):
    """Which header or connection fact names a study's site."""

    INSTITUTION = "institution"
    STATION = "station"
    CALLING_AE = "calling_ae"


class SiteCalibrationSettings(BaseModel):
    """Per-site calibration in the running service."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="apply the model package's per-site calibration to studies of its "
        "sites (a package without one is served as it is)",
    )
    source: CalibrationSiteSource = Field(
        default=CalibrationSiteSource.INSTITUTION,
        description="where a study's site comes from: its Institution Name, its Station "
        "Name or the calling AE title that sent it",
    )
    sites: dict[str, str] = Field(
        default_factory=dict,
        description="raw institution, station or AE title -> the package's site name; "
        "a value not listed is unmapped (the global calibration), never used as it is",
    )

    @field_validator("sites")
    @classmethod
    def _unambiguous(cls, sites: dict[str, str]) -> dict[str, str]:
        if not sites:
            return sites
        from overread.data.sites import ambiguous_values

        problem = ambiguous_values(sites)
        if problem is not None:
            raise ValueError(problem)
        return sites

    def match(self, *, institution: str = "", station: str = "", calling_ae: str = "") -> SiteMatch:
        """The study's site under the shared rule (:func:`overread.data.sites.match_site`)."""
        # Imported here: the data package loads pandas, which reading the settings
        # must not wait for.
        from overread.data.sites import match_site

        return match_site(
            self.source.value,
            self.sites,
            institution=institution,
            station=station,
            calling_ae=calling_ae,
        )


__all__ = ["CalibrationSiteSource", "SiteCalibrationSettings"]
