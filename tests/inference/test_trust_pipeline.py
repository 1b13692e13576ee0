"""``Pipeline.predict(..., trust=True)`` and its micro-batched twin attach explanation trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.inference import Pipeline
from overread.inference.batching import BatchedPipeline
from overread.models import Registry
from overread.phantom import generate_cohort
from overread.results import Decision


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(Registry(tmp_path_factory.mktemp("registry")).load("cxr-default"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, n=4, seed=5, rows=256, cols=256)
    return sorted((out / "images").rglob("*.dcm"))


def test_trust_is_attached_to_every_finding_a_reader_acts_on(
    pipeline: Pipeline, images: list[Path]
) -> None:
    predictions = pipeline.predict(images, trust=True)
    acted = 0
    for prediction in predictions:
        assert prediction.ok, prediction.error
        assert "trust" in prediction.timings and prediction.heatmaps is None
        for finding in prediction.findings:
            if finding.decision is Decision.NEGATIVE:
                assert finding.trust_score is None and finding.deletion_drop is None
                continue
            acted += 1
            assert finding.trust_score is not None and 0.0 <= finding.trust_score <= 1.0
            assert finding.map_concentration is not None and finding.deletion_drop is not None
            assert finding.trust_score == pytest.approx(
                (finding.map_concentration * finding.deletion_drop) ** 0.5
            )
    assert acted > 0
    plain = pipeline.predict(images)
    assert all(f.trust_score is None for p in plain for f in p.findings)
    assert all("trust" not in p.timings for p in plain)


def test_explaining_and_batching_give_the_same_trust(
    pipeline: Pipeline, images: list[Path]
) -> None:
    alone = pipeline.predict(images, trust=True)
    explained = pipeline.predict(images, trust=True, explain=True)
    with_maps = explained[0]
    assert with_maps.heatmaps is not None
    batched = BatchedPipeline(pipeline, max_batch=4, max_wait_ms=2)
    try:
        shared = batched.predict(images, trust=True)
    finally:
        batched.close()
    for a, b, c in zip(alone, explained, shared, strict=True):
        for fa, fb, fc in zip(a.findings, b.findings, c.findings, strict=True):
            if fa.trust_score is None:
                assert fb.trust_score is None and fc.trust_score is None
                continue
            assert fb.trust_score == pytest.approx(fa.trust_score, abs=1e-6)
            assert fc.trust_score == pytest.approx(fa.trust_score, abs=0.02)
