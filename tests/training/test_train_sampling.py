from __future__ import annotations

import numpy as np

from overread.training.sampling import EpochSampler, class_balanced_weights


def _imbalanced(n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((n, 3)) < np.array([0.5, 0.1, 0.02])).astype(np.float32)


def test_class_balanced_sampler_evens_out_rare_labels() -> None:
    targets = _imbalanced()
    sampler = EpochSampler(len(targets), seed=1, weights=class_balanced_weights(targets))
    drawn = targets[list(sampler)]
    prevalence = targets.mean(axis=0)
    sampled = drawn.mean(axis=0)
    # The rarest label (2 %) is drawn many times more often than its prevalence...
    assert sampled[2] > 5 * prevalence[2]
    # ...and the per-label sampled rates are far closer together than the prevalences.
    assert sampled.max() / sampled.min() < prevalence.max() / prevalence.min() / 5


def test_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(a) == list(range(50))


def test_ranks_partition_the_epoch_like_one_process() -> None:
    single = EpochSampler(10, seed=5)
    ranks = [EpochSampler(10, seed=5, rank=r, world_size=2) for r in range(2)]
    order = list(single)
    assert list(ranks[0]) == order[0::2]
    assert list(ranks[1]) == order[1::2]
    # Odd length pads by wrapping so every rank has the same number of batches.
    odd = [EpochSampler(11, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(list(odd[0])) == len(list(odd[1])) == 6


def test_resume_skips_trained_batches() -> None:
    sampler = EpochSampler(20, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start_batch=3, batch_size=4)
    assert list(sampler) == full[12:]
    assert len(sampler) == 8
