"""Micro-batching on the service path: workers share one model and its forward passes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.config import Settings
from overread.service.config import service_config
from overread.service.db import Result
from overread.service.runtime import RegistryPipelineProvider, session_threads

from .conftest import make_dx, needs_dcmtk, send_and_run

inference = pytest.importorskip("overread.inference", reason="the inference pipeline is missing")

from overread.inference.batching import BatchedPipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return inference.Pipeline.from_name("cxr-default")


def _probabilities(prediction: Any) -> np.ndarray:
    return np.array([f.probability for f in prediction.findings])


def test_concurrent_callers_share_one_forward_pass_with_unbatched_results(
    pipeline: Any, tmp_path: Path
) -> None:
    paths = [make_dx(tmp_path / f"dx{i}.dcm", size=256, seed=i) for i in range(3)]
    alone = pipeline.predict(paths)
    # A long wait and a batch bound of 3: the batch runs when the third caller arrives.
    batched = BatchedPipeline(pipeline, max_batch=3, max_wait_ms=30_000)
    results: dict[int, Any] = {}
    start = threading.Barrier(3)

    def call(index: int) -> None:
        start.wait()
        (results[index],) = batched.predict([paths[index]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert batched.calls == 1 and batched.batch_sizes == [3]
        for index, reference in enumerate(alone):
            got = results[index]
            assert got.ok and got.path == reference.path
            assert [f.label for f in got.findings] == [f.label for f in reference.findings]
            assert [f.decision for f in got.findings] == [f.decision for f in reference.findings]
            # Batch 4 (3 padded) and batch 1 differ only by float rounding.
            np.testing.assert_allclose(_probabilities(got), _probabilities(reference), atol=1e-6)
            assert set(got.timings) >= {"read", "preprocess", "inference", "postprocess"}
    finally:
        batched.close()


def test_bad_inputs_and_heatmaps_match_the_unbatched_pipeline(
    pipeline: Any, tmp_path: Path
) -> None:
    good = make_dx(tmp_path / "good.dcm", size=256)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a DICOM file")
    batched = BatchedPipeline(pipeline, max_batch=2, max_wait_ms=1)
    try:
        got = batched.predict([bad, good], explain=True)
        want = pipeline.predict([bad, good], explain=True)
    finally:
        batched.close()
    assert [p.ok for p in got] == [p.ok for p in want] == [False, True]
    assert got[0].error == want[0].error
    assert got[1].heatmaps is not None and want[1].heatmaps is not None
    for label, heatmap in want[1].heatmaps.items():
        np.testing.assert_allclose(got[1].heatmaps[label], heatmap, atol=1e-5)


def test_threads_split_the_cores_between_models() -> None:
    assert session_threads(1, cores=2) == 2
    assert session_threads(2, cores=2) == 1
    assert session_threads(3, cores=2) == 1
    assert session_threads(2, cores=16) == 8


def test_provider_shares_one_batched_pipeline_per_model_and_warms_it_up() -> None:
    provider = RegistryPipelineProvider(max_batch=4, max_wait_ms=5)
    try:
        provider.warmup(["cxr-default"])
        first, second = provider.get("cxr-default"), provider.get("cxr-default")
        assert first is second
        assert isinstance(first, BatchedPipeline)
        # Every padded batch size has its runtime session ready before the first study.
        assert set(first.pipeline.runtime._sessions) >= {1, 2, 4}
        assert provider.identify("cxr-default").name == "cxr-default"
    finally:
        provider.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from overread.gateway import Gateway

    services: list[Gateway] = []

    def start(models: Any, **overrides: object) -> Gateway:
        values: dict[str, object] = {
            "dicom_port": 0,
            "dicom_host": "127.0.0.1",
            "http_port": 0,
            "stable_seconds": 60,
            "poll_seconds": 0.2,
        }
        values.update(overrides)
        config = service_config(Settings(data_dir=tmp_path / "data"), **values)
        service = Gateway(config, models=models(config) if callable(models) else models)
        service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop(timeout=10)


@pytest.mark.service
@needs_dcmtk
def test_two_workers_serve_two_studies_with_one_batched_model_call(
    gateway: Callable[..., Any], tmp_path: Path, pipeline: Any
) -> None:
    providers: list[RegistryPipelineProvider] = []

    def provider(config: Any) -> RegistryPipelineProvider:
        providers.append(RegistryPipelineProvider.from_config(config))
        return providers[-1]

    # Two workers; a batch of two runs as soon as both studies' images are in.
    service = gateway(provider, workers=2, batch_max_size=2, batch_max_wait_ms=20_000)
    images = [
        make_dx(tmp_path / f"study{i}.dcm", size=256, seed=i, study_uid=generate_uid())
        for i in range(2)
    ]
    send_and_run(service, [*images])
    batched = providers[0].get("cxr-default")
    assert isinstance(batched, BatchedPipeline)
    assert batched.calls == 1 and batched.batch_sizes == [2]
    with service.database.session() as session:
        results = list(session.scalars(select(Result).order_by(Result.id)).all())
    alone = {p.path: p for p in pipeline.predict(images)}
    by_study = {str(p.metadata.study_instance_uid): p for p in alone.values()}
    for result in results:
        reference = by_study[result.study_instance_uid]
        stored = [f["probability"] for f in result.summary["instances"][0]["findings"]]
        np.testing.assert_allclose(stored, _probabilities(reference), atol=1e-6)
        timings = result.summary["timings"]
        assert {"read", "preprocess", "inference", "artifacts", "model_total"} <= set(timings)
        assert all(value >= 0 for value in timings.values())
