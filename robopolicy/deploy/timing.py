"""Precise periodic waits and period-jitter statistics for the control loop."""

from __future__ import annotations

import time

import numpy as np


def precise_wait(deadline: float, spin_s: float = 0.0005, clock=time.monotonic) -> float:
    """Sleep until ``spin_s`` before ``deadline``, then spin; returns the time it woke up."""
    remaining = deadline - clock()
    if remaining > spin_s:
        time.sleep(remaining - spin_s)
    now = clock()
    while now < deadline:
        now = clock()
    return now


class PeriodRecorder:
    """Start-to-start periods of a loop; jitter = period - nominal period."""

    def __init__(self, period_s: float, capacity: int = 200_000):
        self.period_s = period_s
        self._buf = np.empty(capacity, dtype=np.float64)
        self._n = 0
        self._last: float | None = None
        self.overruns = 0  # ticks that started later than one full period after their deadline

    def tick(self, t: float) -> None:
        if self._last is not None and self._n < len(self._buf):
            self._buf[self._n] = t - self._last
            self._n += 1
        self._last = t

    @property
    def periods(self) -> np.ndarray:
        return self._buf[: self._n]

    def stats(self) -> dict[str, float | int | None]:
        p = self.periods
        if len(p) == 0:
            return {"n": 0, "period_ms": self.period_s * 1e3, "jitter_p50_us": None, "jitter_p99_us": None,
                    "jitter_max_us": None, "overruns": self.overruns}
        jitter = np.abs(p - self.period_s) * 1e6
        p50, p99 = np.percentile(jitter, [50, 99])
        return {"n": int(len(p)), "period_ms": self.period_s * 1e3, "mean_period_ms": float(p.mean() * 1e3),
                "jitter_p50_us": float(p50), "jitter_p99_us": float(p99), "jitter_max_us": float(jitter.max()),
                "overruns": self.overruns}


__all__ = ["PeriodRecorder", "precise_wait"]
