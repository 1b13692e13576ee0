"""Backoff between job attempts: exponential from the base, capped, jittered below the cap."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from overread.service.jobs import RetryPolicy


def test_delay_doubles_then_caps() -> None:
    policy = RetryPolicy(base_seconds=1.5, maximum_seconds=20.0, jitter=0)
    assert [policy.delay(a) for a in range(1, 7)] == [1.5, 3.0, 6.0, 12.0, 20.0, 20.0]
    assert policy.delay(10_000) == 20.0


def test_default_policy_waits_two_seconds_then_doubles_up_to_a_minute_for_a_day() -> None:
    exact = RetryPolicy(jitter=0)
    assert [exact.delay(a) for a in range(1, 5)] == [2.0, 4.0, 8.0, 16.0]
    assert exact.delay(30) == 60.0
    assert exact.delay(0) == 2.0  # no failure counted yet: the base delay
    default = RetryPolicy()
    assert (default.jitter, default.retry_for_seconds) == (0.2, 86400.0)
    assert all(48.0 <= default.delay(30) <= 60.0 for _ in range(100))


def test_a_larger_backoff_cap_is_lowered_to_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:

    from overread.config import Settings
    from overread.service.config import service_config

    with caplog.at_level(logging.WARNING, logger="overread.service.config"):
        config = service_config(Settings(data_dir=tmp_path), retry_max_seconds=600.0)
    assert config.retry_max_seconds == 60.0
    assert "retry_max_seconds 600 lowered to 60" in caplog.text
    assert service_config(Settings(data_dir=tmp_path), retry_max_seconds=30).retry_max_seconds == 30
