"""How long to wait before retrying a delivery: exponential backoff with jitter.

A PACS that is down for maintenance, or an archive that answers "out of
resources", must not be hammered by every worker at once, nor lose a result. The
job system therefore retries a failed send after :meth:`RetryPolicy.next_delay`
seconds and dead-letters it after :attr:`RetryPolicy.max_attempts` attempts.

The delay doubles with each attempt from ``base_delay`` up to ``max_delay`` and is
then jittered: uniform between ``(1 - jitter)`` and 1 times that nominal delay. With
the default ``jitter=0.5`` this is the "equal jitter" scheme of the AWS Architecture
Blog's *Exponential Backoff and Jitter*: it keeps half the nominal delay as a floor,
so retries do not bunch at zero, while spreading workers that failed together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from overread.errors import ConfigError


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and backoff for deliveries.

    Parameters
    ----------
    max_attempts
        Total attempts including the first; after the last failure the job is
        dead-lettered.
    base_delay
        Nominal delay in seconds before the second attempt; doubles each attempt.
    max_delay
        Upper bound on any delay, in seconds.
    jitter
        Fraction of the nominal delay that is randomised (0 = none, 0.5 = the delay
        is uniform in [0.5, 1] x nominal).
    """

    max_attempts: int = 8
    base_delay: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"retry max_attempts must be at least 1; got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("retry delays must not be negative")
        if self.max_delay < self.base_delay:
            raise ConfigError(
                f"retry max_delay ({self.max_delay}) is below base_delay ({self.base_delay})"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"retry jitter must be in [0, 1]; got {self.jitter}")

    def nominal_delay(self, attempt: int) -> float:
        """Delay in seconds after failed attempt number ``attempt`` (1-based), no jitter."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1; got {attempt}")
        # Cap the exponent so huge attempt numbers do not overflow a float.
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))

    def next_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        nominal = self.nominal_delay(attempt)
        return nominal * (1.0 - self.jitter * self.rng.random())

    def should_retry(self, attempt: int) -> bool:
        """Whether another attempt may follow failed attempt ``attempt``."""
        return attempt < self.max_attempts


__all__ = ["RetryPolicy"]
