"""Observations made without the model: the statistics' tests need only their numbers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pytest

from overread.monitoring.observations import HEADER_FIELDS, IMAGE_STATISTICS, StudyObservation

LABELS = ("Pneumothorax", "Pleural Effusion")


def make_observation(
    rng: np.random.Generator,
    *,
    site: str = "NGH",
    date: dt.date = dt.date(2025, 1, 1),
    uid: str = "1",
    station: str = "NGH-DX01",
    noise: float = 0.01,
    shift: float = 0.0,
    group: str = "A",
) -> StudyObservation:
    header = dict.fromkeys(HEADER_FIELDS, "x")
    header["station"] = station
    header["view"] = "PA" if rng.random() < 0.7 else "AP"
    image = dict.fromkeys(IMAGE_STATISTICS, 0.0)
    image["mean"] = float(rng.normal(0.5, 0.05))
    image["noise"] = float(rng.normal(noise, 0.002))
    image["contrast"] = float(rng.normal(0.2, 0.02))
    p = 1 / (1 + np.exp(-rng.normal(-1.0 + shift, 1.0, size=len(LABELS))))
    return StudyObservation(
        study_instance_uid=uid,
        site=site,
        date=date,
        model="m@1",
        header=tuple(header[f] for f in HEADER_FIELDS),
        image=tuple(image[s] for s in IMAGE_STATISTICS),
        labels=LABELS,
        probabilities=tuple(float(v) for v in p),
        positive=tuple(bool(v >= 0.5) for v in p),
        embedding=tuple(float(v) for v in rng.normal(shift, 1.0, size=6)),
        group=group,
        patient_id=uid,
    )


@pytest.fixture
def observation() -> Callable[..., StudyObservation]:
    return make_observation
