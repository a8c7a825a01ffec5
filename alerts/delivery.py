"""Delivery policy for the SMS outbox: what a provider error means, when to retry, how fast
to send. Pure rules with an injectable clock; the database side lives in the application.

- :data:`PERMANENT_ERRORS`: provider error codes a retry cannot fix, with what they mean
  for the subscriber (opted out, or unreachable by SMS).
- :class:`RetryPolicy`: exponential backoff for temporary failures (network, 5xx, queue
  limits, unreachable handset), with a cap on attempts.
- :class:`RateLimiter`: a token bucket in message *segments* per second, the unit
  providers meter throughput in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["PERMANENT_ERRORS", "RateLimiter", "RetryPolicy", "subscriber_effect"]

PERMANENT_ERRORS: dict[int, tuple[str, str]] = {
    21211: ("invalid 'To' phone number", "unreachable"),
    21408: ("no permission to send to that region", "operator"),
    21610: ("recipient replied STOP (unsubscribed)", "opted_out"),
    21612: ("the 'To' number cannot be reached from this sender", "unreachable"),
    21614: ("'To' number is not a mobile number", "unreachable"),
    30004: ("message blocked by the recipient or carrier", "unreachable"),
    30005: ("unknown or inactive destination", "unreachable"),
    30006: ("landline or unreachable carrier", "unreachable"),
}
"""Twilio error code -> (meaning, effect). Effects: ``opted_out`` (mirror the opt-out),
``unreachable`` (stop sending SMS to the number), ``operator`` (a configuration problem:
the subscriber is fine, operators must act)."""


def subscriber_effect(code: int | None) -> tuple[str, str] | None:
    """(meaning, effect) of a permanent provider error, or None for other codes."""
    if code is None:
        return None
    return PERMANENT_ERRORS.get(int(code))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt k (1-based) failed -> wait ``base * factor**(k-1)``,
    at most ``cap``; after ``max_attempts`` failed attempts the message is given up.

    Parameters
    ----------
    base : timedelta
        Wait after the first failure.
    factor : float
        Growth per further failure (>= 1).
    cap : timedelta
        Longest wait.
    max_attempts : int
        Attempts in all (>= 1).
    """

    base: timedelta = timedelta(seconds=30)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=10)
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.base < timedelta(0) or self.cap < self.base:
            raise ValueError(f"need 0 <= base <= cap, got base {self.base}, cap {self.cap}")
        if self.factor < 1.0:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def delay(self, attempts: int) -> timedelta | None:
        """Wait before the next attempt after ``attempts`` failed ones; None = give up."""
        if attempts >= self.max_attempts:
            return None
        seconds = self.base.total_seconds() * self.factor ** max(attempts - 1, 0)
        return min(timedelta(seconds=seconds), self.cap)


class RateLimiter:
    """Token bucket: at most ``rate`` segments per second on average, bursts up to
    ``burst`` segments. Thread-safe; ``rate=None`` means no limit.

    Parameters
    ----------
    rate : float or None
        Segments per second (> 0), or None for unlimited.
    burst : float, optional
        Bucket size in segments (default: one second's worth, at least 1).
    clock, sleep : callables
        ``time.monotonic`` and ``time.sleep`` by default (tests inject fakes).
    """

    def __init__(self, rate: float | None, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 segments/s or None, got {rate!r}")
        self.rate = rate
        self.burst = max(1.0, float(burst if burst is not None else (rate or 1.0)))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, segments: int = 1) -> float:
        """Take ``segments`` tokens, sleeping until they are there; returns seconds slept.

        A message longer than the bucket waits until the bucket is full, then takes it
        all (the debt is paid back before the next message goes).
        """
        if self.rate is None:
            return 0.0
        slept = 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            need = min(float(segments), self.burst)
            if self._tokens < need:
                slept = (need - self._tokens) / self.rate
                self._sleep(slept)
                # the bucket refilled to exactly `need` meanwhile (oversleeping is not credited)
                self._last = self._clock()
                self._tokens = need
            self._tokens -= float(segments)
            return slept
