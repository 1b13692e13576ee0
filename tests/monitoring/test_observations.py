"""A study's observation, built from a phantom DICOM, its model input and the model's result."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from overread.imaging import read
from overread.inference.result import Prediction
from overread.monitoring.observations import (
    EMBEDDING_BINS,
    EMBEDDING_GRID,
    HEADER_FIELDS,
    IMAGE_STATISTICS,
    image_statistics,
    observe,
)
from overread.phantom import generate_cohort


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), n=1, seed=3, rows=256, cols=256, internal=128)
    return next(out.glob("images/*/*/*.dcm"))


def test_observe_a_phantom_study(phantom_file: Path) -> None:
    from overread.inference.pipeline import Pipeline

    pipeline = Pipeline.from_name()
    image = read(phantom_file)
    x, _ = pipeline.preprocess(image)
    prediction = Prediction(path=str(phantom_file), ok=True, model=pipeline.model)
    prediction.findings = pipeline.findings(pipeline.predict_batch(x[None])[0])
    ds = image.dataset
    o = observe(ds, x, prediction, site="NGH")
    assert o.site == "NGH"
    assert o.study_instance_uid == ds.StudyInstanceUID
    assert o.date == dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
    assert o.model == f"{pipeline.model.name}@{pipeline.model.version}"
    assert len(o.header) == len(HEADER_FIELDS)
    assert o.header_value("manufacturer") == ds.Manufacturer
    assert o.header_value("kvp") == str(ds.KVP)
    assert len(o.image) == len(IMAGE_STATISTICS)
    assert o.image[IMAGE_STATISTICS.index("rows")] == 256
    assert o.image[IMAGE_STATISTICS.index("spacing")] == pytest.approx(float(ds.PixelSpacing[0]))
    assert o.labels == tuple(pipeline.labels)
    assert o.probabilities == pytest.approx([f.probability for f in prediction.findings])
    assert len(o.embedding) == EMBEDDING_GRID**2 + EMBEDDING_BINS
    assert sum(o.embedding[-EMBEDDING_BINS:]) == pytest.approx(1.0)
    assert o.group == ds.EthnicGroup and o.sex == ds.PatientSex
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.site = "X"  # type: ignore[misc]
    # Pure: the inputs are left as they were.
    assert x.shape[0] == pipeline.package.manifest.input.channels


def test_noise_statistic_follows_the_noise() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((128, 128), 0.5)
    quiet = image_statistics(flat + rng.normal(0, 0.01, flat.shape), 128, 128, 0.2)
    loud = image_statistics(flat + rng.normal(0, 0.04, flat.shape), 128, 128, 0.2)
    noise = IMAGE_STATISTICS.index("noise")
    assert quiet[noise] == pytest.approx(0.01, rel=0.25)
    assert loud[noise] == pytest.approx(0.04, rel=0.25)
