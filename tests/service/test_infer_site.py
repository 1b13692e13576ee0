"""Which image's facts name a study's site: Institution Name, Station Name and calling
AE title all of one image, the first one analysed, never a mix of two images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset

from overread.results import ModelRef, Prediction
from overread.service.db import Instance
from overread.service.infer import InferenceHandler
from overread.service.site_calibration import SiteCalibrationSettings


def _header(uid: str, institution: str, station: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    ds.InstitutionName = institution
    ds.StationName = station
    return ds


@pytest.mark.parametrize(
    ("source", "expected"),
    [("institution", "Hospital B"), ("station", "STATION-B"), ("calling_ae", "MODALITY_B")],
)
def test_the_site_facts_are_those_of_the_first_analysed_image(
    tmp_path: Path, source: str, expected: str
) -> None:
    """The study's first stored image was not analysed (refused, say); the second was.
    Every source takes its value from the second image."""
    items = [
        (
            tmp_path / "a.dcm",
            Instance(sop_instance_uid="1.2.3.1", institution="Hospital A", calling_ae="MODALITY_A"),
        ),
        (
            tmp_path / "b.dcm",
            Instance(sop_instance_uid="1.2.3.2", institution="Hospital B", calling_ae="MODALITY_B"),
        ),
    ]
    model = ModelRef("cxr-default", "1.0.0")
    refused = Prediction(path=str(items[0][0]), ok=False, model=model)
    analysed = Prediction(path=str(items[1][0]), ok=True, model=model)
    readings = [(analysed, _header("1.2.3.2", "Hospital B", "STATION-B"))]
    handler: Any = InferenceHandler.__new__(InferenceHandler)
    handler.services = SimpleNamespace(
        config=SimpleNamespace(site_calibration=SiteCalibrationSettings(source=source, sites={}))
    )
    pipeline = SimpleNamespace(
        package=SimpleNamespace(
            name="m", version="1", manifest=SimpleNamespace(site_calibration=None)
        )
    )
    applied = handler._site_calibration(pipeline, [refused, analysed], readings, items)
    assert applied is not None
    assert applied["site"] == expected and applied["calibration"] == "global"
    assert applied["source"] == source and applied["unmapped"]
