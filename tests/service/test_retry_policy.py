"""Backoff between job attempts: exponential from the base, capped at the maximum."""

from __future__ import annotations

from overread.service.jobs import RetryPolicy


def test_delay_doubles_then_caps() -> None:
    policy = RetryPolicy(base_seconds=1.5, maximum_seconds=20.0)
    assert [policy.delay(a) for a in range(1, 7)] == [1.5, 3.0, 6.0, 12.0, 20.0, 20.0]
    assert policy.delay(10_000) == 20.0


def test_default_policy_waits_two_seconds_then_doubles_up_to_ten_minutes() -> None:
    policy = RetryPolicy()
    assert [policy.delay(a) for a in range(1, 5)] == [2.0, 4.0, 8.0, 16.0]
    assert policy.delay(30) == 600.0
    assert policy.delay(0) == 2.0  # no failure counted yet: the base delay
