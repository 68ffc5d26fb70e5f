"""Time-stamped waypoints and linear interpolation between them, with a validity window.

A waypoint ``(t_i, a_i)`` says "at time t_i the target is a_i". Between two waypoints the target
is interpolated linearly; after the last one it is held for at most ``validity_s``; outside that
(and before the first waypoint) there is *no* valid target, so the caller must use its safe action.
"""

from __future__ import annotations

import numpy as np


class Waypoints:
    def __init__(self, times: np.ndarray, actions: np.ndarray, validity_s: float):
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] != len(times):
            raise ValueError(f"need actions (N, A) for N={len(times)} times, got {actions.shape}")
        if len(times) > 1 and not np.all(np.diff(times) > 0):
            raise ValueError("waypoint times must be strictly increasing")
        self.times = times
        self.actions = actions
        self.validity_s = float(validity_s)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def t_start(self) -> float:
        return float(self.times[0]) if len(self.times) else np.inf

    @property
    def t_end(self) -> float:
        """Last time at which this trajectory still gives a valid target."""
        return float(self.times[-1]) + self.validity_s if len(self.times) else -np.inf

    def valid_at(self, t: float) -> bool:
        return len(self.times) > 0 and self.t_start <= t <= self.t_end

    def __call__(self, t: float) -> np.ndarray | None:
        """Target at time ``t``, or None when ``t`` lies outside ``[t_first, t_last + validity]``."""
        if not self.valid_at(t):
            return None
        return interpolate(self.times, self.actions, t)

    def drop_before(self, t: float) -> int:
        """Drop waypoints whose time is before ``t``; returns how many were dropped."""
        keep = self.times >= t
        n = int((~keep).sum())
        self.times, self.actions = self.times[keep], self.actions[keep]
        return n

    def prune(self, t: float) -> None:
        """Forget waypoints no longer needed to interpolate at times >= t (keeps the one before t)."""
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        if i > 0:
            self.times, self.actions = self.times[i:], self.actions[i:]


def interpolate(times: np.ndarray, actions: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation of ``actions (N, A)`` at ``t``; held constant outside ``[times[0], times[-1]]``."""
    n = len(times)
    if n == 1 or t <= times[0]:
        return actions[0].copy()
    if t >= times[-1]:
        return actions[-1].copy()
    j = int(np.searchsorted(times, t, side="right"))  # times[j-1] <= t < times[j]
    t0, t1 = times[j - 1], times[j]
    w = (t - t0) / (t1 - t0)
    return (1.0 - w) * actions[j - 1] + w * actions[j]


__all__ = ["Waypoints", "interpolate"]
