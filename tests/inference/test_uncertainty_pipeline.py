"""The pipeline's uncertainty: TTA, Monte Carlo dropout, ensembles, conformal sets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.models.conftest import LABELS, TINY_ARCH, tiny_package

from overread.errors import InferenceError, ModelPackageError
from overread.imaging import read
from overread.imaging.transforms import cxr_chain
from overread.inference.batching import BatchedPipeline
from overread.inference.pipeline import Pipeline
from overread.models import Registry, build_network, load_package, write_package
from overread.models.package import derive_package, write_ensemble_package
from overread.results import Decision


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    torch.manual_seed(3)
    arch = TINY_ARCH | {"dropout_prob": 0.5}
    dropout = write_package(
        root / "dropout",
        network=build_network("cxr-convnet", num_classes=len(LABELS), **arch),
        architecture="cxr-convnet",
        arch_kwargs=arch,
        labels=LABELS,
        input_spec={"size": 32, "channels": 1, "chain": cxr_chain(32).to_spec()},
        name="tiny-dropout",
        version="1.0.0",
        intended_use="tests only",
    )
    return {
        "a": tiny_package(root / "a", version="1.0.0", seed=0),
        "b": tiny_package(root / "b", version="2.0.0", seed=1),
        "dropout": dropout,
    }


@pytest.fixture
def images(cxr_dicom: Callable[..., Path]) -> list[Path]:
    return [cxr_dicom(rows=64, cols=64) for _ in range(3)]


def test_single_pass_gives_entropy_and_no_mutual_information(
    packages: dict[str, Path], images: list[Path]
) -> None:
    pipeline = Pipeline(load_package(packages["a"]))
    assert pipeline.single_pass
    finding = pipeline.predict(images[:1])[0].findings[0]
    assert finding.entropy is not None and 0.0 <= finding.entropy <= 1.0
    assert finding.mutual_information is None and finding.conformal_set is None


def test_tta_samples_are_deterministic_and_average(
    packages: dict[str, Path], images: list[Path]
) -> None:
    pipeline = Pipeline(load_package(packages["a"]), tta_views=4)
    x = np.stack([pipeline.preprocess(read(p))[0] for p in images])
    samples, _ = pipeline.probability_samples(x)
    assert samples.shape == (4, 3, len(LABELS))
    # View 0 is the unaugmented image: the single-pass probabilities.
    single = Pipeline(load_package(packages["a"]))
    np.testing.assert_allclose(samples[0], single.predict_batch(x), atol=1e-5)
    again, _ = pipeline.probability_samples(x)
    np.testing.assert_array_equal(samples, again)
    first = pipeline.predict(images)
    second = pipeline.predict(images)
    for a, b in zip(first, second, strict=True):
        assert [f.probability for f in a.findings] == [f.probability for f in b.findings]
        assert all(f.mutual_information is not None for f in a.findings)
    np.testing.assert_allclose(
        [f.probability for f in first[0].findings], samples[:, 0].mean(axis=0), atol=1e-6
    )


def test_batched_pipeline_gives_the_same_uncertainty(
    packages: dict[str, Path], images: list[Path]
) -> None:
    pipeline = Pipeline(load_package(packages["a"]), tta_views=3)
    direct = pipeline.predict(images)
    batched = BatchedPipeline(pipeline, max_batch=4, max_wait_ms=1)
    try:
        served = batched.predict(images)
    finally:
        batched.close()
    for a, b in zip(direct, served, strict=True):
        for fa, fb in zip(a.findings, b.findings, strict=True):
            assert fa.probability == pytest.approx(fb.probability, abs=1e-5)
            assert fa.mutual_information == pytest.approx(fb.mutual_information, abs=1e-5)


def test_mc_dropout_is_refused_without_dropout(packages: dict[str, Path]) -> None:
    with pytest.raises(InferenceError) as caught:
        Pipeline(load_package(packages["a"]), mc_dropout=5)
    message = str(caught.value)
    assert "\n" not in message and "p = 0" in message and "Monte Carlo dropout" in message


def test_mc_dropout_samples_vary_and_repeat(packages: dict[str, Path], images: list[Path]) -> None:
    pipeline = Pipeline(load_package(packages["dropout"]), mc_dropout=6)
    network = pipeline._torch.network  # type: ignore[union-attr]
    x = np.random.default_rng(0).uniform(size=(2, 1, 32, 32)).astype(np.float32)
    samples, _ = pipeline.probability_samples(x)
    assert samples.shape == (6, 2, len(LABELS))
    assert np.ptp(samples, axis=0).max() > 1e-4  # the passes differ ...
    np.testing.assert_array_equal(samples, pipeline.probability_samples(x)[0])  # ... repeatably
    # An image gets the same samples whatever shares its batch (micro-batching).
    alone, _ = pipeline.probability_samples(x[1:])
    np.testing.assert_allclose(samples[:, 1], alone[:, 0], rtol=1e-5, atol=1e-6)
    # Batch norm stayed in eval mode and the network is left in eval mode.
    assert not network.training
    assert all(not m.training for m in network.modules())
    findings = pipeline.predict(images[:1])[0].findings
    assert all(f.mutual_information is not None and f.mutual_information >= 0 for f in findings)


def test_ensemble_averages_its_members(
    packages: dict[str, Path], images: list[Path], tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry", include_bundled=False)
    members = [registry.load(str(registry.import_package(packages[k]))) for k in ("a", "b")]
    ensemble = write_ensemble_package(tmp_path / "ens", members, name="tiny-ens", version="1")
    pipeline = Pipeline(ensemble, registry=registry)
    x = np.random.default_rng(1).uniform(size=(2, 1, 32, 32)).astype(np.float32)
    expected = np.mean([Pipeline(m).predict_batch(x) for m in members], axis=0)
    np.testing.assert_allclose(pipeline.predict_batch(x), expected, atol=1e-6)
    prediction = pipeline.predict(images[:1])[0]
    assert prediction.ok and prediction.model.name == "tiny-ens"
    assert all(f.mutual_information is not None for f in prediction.findings)
    with pytest.raises(InferenceError, match="ensemble"):
        pipeline.run(x)
    # A member gone from the registry: the ensemble is refused in one line.
    import shutil

    shutil.rmtree(members[1].path)
    with pytest.raises(ModelPackageError, match="missing"):
        Pipeline(ensemble, registry=registry)


def _conformal(q0: float | None, q1: float | None, **scores: object) -> dict[str, object]:
    return {
        "alpha": 0.1,
        "method": "class-conditional",
        "n": 100,
        "quantiles": {
            label: {"marginal": 0.5, "negative": q0, "positive": q1, "n": 100} for label in LABELS
        },
        "scores": {"tta_views": 1, "tta": None, "mc_dropout_passes": 0} | scores,
    }


def test_conformal_sets_and_the_joined_referral(
    packages: dict[str, Path], images: list[Path], tmp_path: Path
) -> None:
    source = load_package(packages["a"])
    # Quantiles so tight no class is ever included: every set is empty -> refer.
    empty = derive_package(
        source, tmp_path / "empty", version="1.0.1", conformal=_conformal(0.0, 0.0)
    )
    findings = Pipeline(empty).predict(images[:1])[0].findings
    assert {f.conformal_set for f in findings} == {"empty"}
    assert {f.decision for f in findings} == {Decision.INDETERMINATE}
    # Null quantiles include both classes: always ambiguous.
    both = derive_package(
        source, tmp_path / "both", version="1.0.2", conformal=_conformal(None, None)
    )
    assert {f.conformal_set for f in Pipeline(both).predict(images[:1])[0].findings} == {"both"}
    # Quantiles that make singletons leave the threshold decision alone.
    single = derive_package(
        source, tmp_path / "one", version="1.0.3", conformal=_conformal(0.5, 0.5)
    )
    plain = Pipeline(source).predict(images[:1])[0].findings
    served = Pipeline(single).predict(images[:1])[0].findings
    for a, b in zip(plain, served, strict=True):
        assert b.conformal_set in ("positive", "negative")
        assert (b.conformal_set == "positive") == (b.probability >= 0.5)
        assert a.decision == b.decision
    # Sets calibrated for single-pass probabilities do not apply under TTA.
    tta = Pipeline(single, tta_views=3)
    assert not tta.conformal_applies
    assert {f.conformal_set for f in tta.predict(images[:1])[0].findings} == {None}


def test_predict_cli_refuses_mc_dropout_in_one_line(
    run_cli: Callable[..., tuple[int, str, str]], packages: dict[str, Path], images: list[Path]
) -> None:
    status, _, err = run_cli("predict", images[0], "--model", packages["a"], "--mc-dropout", "3")
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "dropout" in err
    status, out, err = run_cli("predict", images[0], "--model", packages["a"], "--tta", "3")
    assert status == 0, err
    assert " MI " in out
