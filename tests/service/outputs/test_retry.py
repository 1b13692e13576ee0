"""Backoff delays: exponential, capped, jittered within bounds, reproducible with a seed."""

from __future__ import annotations

import random

import pytest

from overread.errors import ConfigError
from overread.service.outputs import RetryPolicy


def test_nominal_delay_doubles_then_caps() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1.5, max_delay=20.0)
    assert [policy.nominal_delay(a) for a in range(1, 7)] == [1.5, 3.0, 6.0, 12.0, 20.0, 20.0]
    assert policy.nominal_delay(10_000) == 20.0


def test_jittered_delay_stays_within_half_and_full_nominal() -> None:
    policy = RetryPolicy(base_delay=2.0, max_delay=60.0, jitter=0.5, rng=random.Random(7))
    for attempt in range(1, 12):
        nominal = policy.nominal_delay(attempt)
        delays = [policy.next_delay(attempt) for _ in range(200)]
        assert all(nominal * 0.5 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > 0.3 * nominal  # actually spread out


def test_seeded_policies_agree_and_no_jitter_is_exact() -> None:
    a = RetryPolicy(rng=random.Random(3))
    b = RetryPolicy(rng=random.Random(3))
    assert [a.next_delay(n) for n in range(1, 6)] == [b.next_delay(n) for n in range(1, 6)]
    exact = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.0)
    assert [exact.next_delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_should_retry_counts_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": -1.0},
        {"base_delay": 10.0, "max_delay": 5.0},
        {"jitter": 1.5},
    ],
)
def test_invalid_policies_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().next_delay(0)
