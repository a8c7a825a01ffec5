"""One sending rate shared by every process on the database.

Providers meter throughput per account (Twilio: message segments per second), not per
process, so every dispatcher of a site draws on one limit kept in the database table
``rate_limits``. It is the generic cell rate algorithm (GCRA, "virtual scheduling"): the
row holds the limit's *theoretical arrival time* ``tat`` (epoch seconds, wall clock), the
time by which everything reserved so far has been paid for at ``rate``. To send ``k``
segments a dispatcher moves it on by ``k / rate`` in one atomic statement::

    UPDATE rate_limits SET tat = max(tat, now) + k / rate WHERE name = :name RETURNING tat

and may send once ``now >= tat_new - burst / rate``. Every reservation is a single
statement, so two processes never read-modify-write: SQLite lets one writer in at a time,
and PostgreSQL re-evaluates the statement on the row as the previous writer left it. Over
any interval ``T`` the limit lets through at most ``rate * T + burst`` segments, whatever
the number of dispatchers; it is equivalent to a token bucket of ``burst`` segments.

A reservation is kept even if its holder dies before sending (the capacity is lost, never
overdrawn). Processes on several machines need their clocks in step (NTP), as for leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import case, literal, update
from sqlalchemy.exc import IntegrityError

from .storage import RateLimitRow, Store

__all__ = ["SharedRateLimiter"]


class SharedRateLimiter:
    """At most ``rate`` segments per second on average, bursts up to ``burst`` segments,
    summed over every process that uses the same ``name`` on the same database.

    Parameters
    ----------
    store : Store
    name : str
        The limit's name: one per provider account (e.g. ``sms:twilio``).
    rate : float or None
        Segments per second (> 0); None means no limit (and no database traffic).
    burst : float, optional
        Segments that may go at once after a quiet spell (default: one second's worth, at
        least 1), as :class:`alerts.delivery.RateLimiter`.
    clock, sleep : callables
        ``time.time`` (epoch seconds, shared between processes) and ``time.sleep``.
    """

    def __init__(self, store: Store, name: str, rate: float | None, burst: float | None = None, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 segments/s or None, got {rate!r}")
        if burst is not None and not burst > 0:
            raise ValueError(f"burst must be > 0 segments, got {burst!r}")
        self.store = store
        self.name = name
        self.rate = rate
        self.burst = max(1.0, float(burst if burst is not None else (rate or 1.0)))
        self._clock = clock
        self._sleep = sleep

    def reserve(self, segments: int = 1) -> float:
        """Reserve ``segments`` at the shared limit; returns how many seconds to wait before
        sending them (0 when they may go now). The reservation stands whether or not the
        caller then sends."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        cost = float(segments) / self.rate
        stmt = (update(RateLimitRow).where(RateLimitRow.name == self.name)
                .values(tat=case((RateLimitRow.tat > now, RateLimitRow.tat), else_=literal(now)) + cost)
                .returning(RateLimitRow.tat).execution_options(synchronize_session=False))
        for _ in range(2):
            with self.store.session.begin() as s:
                tat = s.scalar(stmt)
            if tat is not None:
                return max(0.0, tat - self.burst / self.rate - now)
            try:  # the first use of this limit on the database: create its row, then reserve
                with self.store.session.begin() as s:
                    s.add(RateLimitRow(name=self.name, tat=0.0))
            except IntegrityError:  # another process created it first
                pass
        raise RuntimeError(f"rate limit {self.name!r}: its row vanished while reserving")  # pragma: no cover

    def acquire(self, segments: int = 1) -> float:
        """Reserve ``segments`` and sleep until they may go; returns seconds slept."""
        wait = self.reserve(segments)
        if wait > 0:
            self._sleep(wait)
        return wait
