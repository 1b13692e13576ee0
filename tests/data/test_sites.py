"""The site rule's mapping: source values compared ignoring case and spaces, and a
mapping whose equal values name different sites refused where it is configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.config import Settings
from overread.data.sites import ambiguous_values, match_site
from overread.errors import ConfigError
from overread.service.config import service_config


def test_values_that_compare_equal_but_name_different_sites_are_named() -> None:
    sites = {"CR01": "Northgate", " cr01 ": "Riverside", "RMC-DX": "Riverside"}
    problem = ambiguous_values(sites)
    assert problem is not None and "\n" not in problem
    assert "'CR01'" in problem and "' cr01 '" in problem
    assert "'Northgate'" in problem and "'Riverside'" in problem
    # Spellings of one value for one site (its name in any case) are fine.
    assert ambiguous_values({"CR01": "Northgate", "cr01": "NORTHGATE", "CR02": "x"}) is None
    assert ambiguous_values({}) is None
    assert match_site("station", {"CR01": "Northgate", "cr01": "northgate"}, station="Cr01").site


def test_the_service_configuration_refuses_an_ambiguous_mapping(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        service={
            "site_calibration": {
                "source": "station",
                "sites": {"NGH-DX01": "Northgate", "ngh-dx01": "Riverside"},
            }
        },
    )
    with pytest.raises(ConfigError) as raised:
        service_config(settings)
    message = str(raised.value)
    assert message.startswith("invalid service configuration: site_calibration.sites: ")
    assert "'NGH-DX01' and 'ngh-dx01'" in message and "\n" not in message
    fine = Settings(
        data_dir=tmp_path,
        service={"site_calibration": {"sites": {"NGH-DX01": "Northgate", "ngh-dx01": "Northgate"}}},
    )
    assert service_config(fine).site_calibration.match(institution="NGH-DX01").site == "Northgate"
