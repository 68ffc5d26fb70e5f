"""Time-stamped waypoints and linear interpolation between them, with a validity window.

A waypoint ``(t_i, a_i)`` says "at time t_i the target is a_i". Between two waypoints the target
is interpolated linearly, or held (``hold=True``: a_i until t_{i+1}, a zero-order hold: the way a
teleoperated demonstration sent one command per frame, so a policy trained on one sees the arm
move as it did while recording); after the last one it is held for at most ``validity_s``; outside that
(and before the first waypoint) there is *no* valid target, so the caller must use its safe action.

Angles: the action dimensions listed in ``angle_dims`` are angles that wrap with ``angle_period``
(2π for radians, 360 for degrees): a yaw joint, a heading. Between 179° and -179° such a dimension
moves 2° through ±180°, not 358° through 0, and every result is wrapped into [-period/2, period/2).
Blends of several chunks use the same rule (:func:`blend`, and :func:`weighted_mean`: the circular mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TWO_PI = 2 * np.pi


def wrap_angle(a: np.ndarray | float, period: float = TWO_PI) -> np.ndarray:
    """Angles mapped into [-period/2, period/2)."""
    return (np.asarray(a, dtype=np.float64) + period / 2) % period - period / 2


def _dims(angle_dims: Sequence[int]) -> list[int]:
    return [int(i) for i in angle_dims]


def blend(a: np.ndarray, b: np.ndarray, w: float, angle_dims: Sequence[int] = (), period: float = TWO_PI) -> np.ndarray:
    """``(1 - w) a + w b``; angle dimensions go the short way round and come back wrapped."""
    out = (1.0 - w) * a + w * b
    dims = _dims(angle_dims)
    if dims:
        out[dims] = wrap_angle(a[dims] + w * wrap_angle(b[dims] - a[dims], period), period)
    return out


def weighted_mean(values: Sequence[np.ndarray], weights: np.ndarray, angle_dims: Sequence[int] = (),
                  period: float = TWO_PI) -> np.ndarray:
    """Weighted mean of actions; angle dimensions by their circular mean (of unit vectors)."""
    v = np.stack(values)
    w = np.asarray(weights, dtype=np.float64)
    out = (w[:, None] * v).sum(axis=0) / w.sum()
    dims = _dims(angle_dims)
    if dims:
        theta = v[:, dims] * (TWO_PI / period)
        s, c = (w[:, None] * np.sin(theta)).sum(axis=0), (w[:, None] * np.cos(theta)).sum(axis=0)
        out[dims] = wrap_angle(np.arctan2(s, c) * (period / TWO_PI), period)
    return out


class Waypoints:
    def __init__(self, times: np.ndarray, actions: np.ndarray, validity_s: float, angle_dims: Sequence[int] = (),
                 angle_period: float = TWO_PI, hold: bool = False):
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] != len(times):
            raise ValueError(f"need actions (N, A) for N={len(times)} times, got {actions.shape}")
        if len(times) > 1 and not np.all(np.diff(times) > 0):
            raise ValueError("waypoint times must be strictly increasing")
        self.times = times
        self.actions = actions
        self.validity_s = float(validity_s)
        self.angle_dims = _dims(angle_dims)
        self.angle_period = float(angle_period)
        self.hold = bool(hold)

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
        return interpolate(self.times, self.actions, t, self.angle_dims, self.angle_period, self.hold)

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


def _held(action: np.ndarray, dims: list[int], period: float) -> np.ndarray:
    """A copy of one waypoint's action, its angle dimensions wrapped."""
    out = action.copy()
    if dims:
        out[dims] = wrap_angle(out[dims], period)
    return out


def interpolate(times: np.ndarray, actions: np.ndarray, t: float, angle_dims: Sequence[int] = (),
                period: float = TWO_PI, hold: bool = False) -> np.ndarray:
    """Linear interpolation of ``actions (N, A)`` at ``t`` (``hold``: the latest waypoint at or before ``t``);
    held constant outside ``[times[0], times[-1]]``. ``angle_dims`` interpolate the short way round and are
    returned wrapped into [-period/2, period/2)."""
    n = len(times)
    dims = _dims(angle_dims)
    if n == 1 or t <= times[0] or t >= times[-1]:
        return _held(actions[0] if n == 1 or t <= times[0] else actions[-1], dims, period)
    j = int(np.searchsorted(times, t, side="right"))  # times[j-1] <= t < times[j]
    if hold:
        return _held(actions[j - 1], dims, period)
    t0, t1 = times[j - 1], times[j]
    return blend(actions[j - 1], actions[j], (t - t0) / (t1 - t0), dims, period)


__all__ = ["Waypoints", "blend", "interpolate", "weighted_mean", "wrap_angle"]
