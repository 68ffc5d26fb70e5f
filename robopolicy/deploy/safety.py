"""Per-tick safety: limits, non-finite rejection, a watchdog and a latching e-stop.

:class:`SafetyFilter` turns a target into the command actually sent: NaN/inf targets are rejected
(None: the caller holds its safe action), the target is clipped to the position limits, then the
step from the previous command is limited so that velocity and acceleration stay within their
limits for the tick's duration. Safe actions bypass the velocity/acceleration limits (holding or
stopping is by definition what the robot should do now) but still respect the position limits,
and they reset the filter's state so that motion resumes smoothly from there.

Angles (``angle_dims`` wrapping with ``angle_period``, 2π for radians, declared per robot in
``RobotSpec.angle_dims``/``angle_period``): a target is first wrapped into [-period/2, period/2), the step from the previous command is the short way round (179° to -179°
is +2°, not -358°, so the velocity limit never sends a yaw the long way), and commands are wrapped.
Position limits still apply to the wrapped value (limits of ±period/2 leave the dimension free).
"""

from __future__ import annotations

import time

import numpy as np

from robopolicy.deploy.interpolation import wrap_angle


def is_finite_tree(obs: dict[str, np.ndarray]) -> bool:
    """True if every float array of an observation is finite."""
    for v in obs.values():
        a = np.asarray(v)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return False
    return True


class SafetyFilter:
    def __init__(self, low: np.ndarray | None = None, high: np.ndarray | None = None,
                 max_velocity: np.ndarray | float | None = None, max_acceleration: np.ndarray | float | None = None,
                 angle_dims: tuple[int, ...] = (), angle_period: float = 2 * np.pi):
        self.low = None if low is None else np.asarray(low, dtype=np.float64)
        self.high = None if high is None else np.asarray(high, dtype=np.float64)
        self.max_velocity = None if max_velocity is None else np.asarray(max_velocity, dtype=np.float64)
        self.max_acceleration = None if max_acceleration is None else np.asarray(max_acceleration, dtype=np.float64)
        if self.low is not None and self.high is not None and np.any(self.low > self.high):
            raise ValueError("action limits: low must be <= high")
        for name, lim in (("max_velocity", self.max_velocity), ("max_acceleration", self.max_acceleration)):
            if lim is not None and np.any(lim <= 0):
                raise ValueError(f"{name} must be positive")
        self.angle_dims = [int(i) for i in angle_dims]
        self.angle_period = float(angle_period)
        self.last: np.ndarray | None = None
        self.velocity: np.ndarray | None = None
        self.rejected = 0
        self.clipped_position = 0
        self.clipped_velocity = 0
        self.clipped_acceleration = 0

    def _wrap(self, a: np.ndarray) -> np.ndarray:
        if self.angle_dims:
            a = a.copy()
            a[self.angle_dims] = wrap_angle(a[self.angle_dims], self.angle_period)
        return a

    def _step(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a - b``, the short way round for angles."""
        d = a - b
        if self.angle_dims:
            d[self.angle_dims] = wrap_angle(d[self.angle_dims], self.angle_period)
        return d

    def clip_position(self, a: np.ndarray) -> np.ndarray:
        out = self._wrap(a)
        if self.low is not None or self.high is not None:
            out = np.clip(out, self.low, self.high)
        return out

    def reset(self, command: np.ndarray | None = None) -> None:
        self.last = None if command is None else np.asarray(command, dtype=np.float64).copy()
        self.velocity = None if command is None else np.zeros_like(self.last)

    def __call__(self, target: np.ndarray | None, dt: float) -> np.ndarray | None:
        """The command for this tick, or None if ``target`` is missing or not finite."""
        if target is None:
            return None
        a = np.asarray(target, dtype=np.float64)
        if not np.isfinite(a).all():
            self.rejected += 1
            return None
        clipped = self.clip_position(a)
        if not np.array_equal(clipped, self._wrap(a)):
            self.clipped_position += 1
        a = clipped
        if self.last is None or dt <= 0 or a.shape != self.last.shape:
            self.reset(a)
            return a.copy()
        v = self._step(a, self.last) / dt
        if self.max_acceleration is not None and self.velocity is not None:
            dv = np.clip(v - self.velocity, -self.max_acceleration * dt, self.max_acceleration * dt)
            if not np.allclose(dv, v - self.velocity):
                self.clipped_acceleration += 1
            v = self.velocity + dv
        if self.max_velocity is not None:
            vc = np.clip(v, -self.max_velocity, self.max_velocity)
            if not np.allclose(vc, v):
                self.clipped_velocity += 1
            v = vc
        cmd = self.clip_position(self.last + v * dt)
        self.velocity = self._step(cmd, self.last) / dt
        self.last = cmd
        return cmd.copy()

    def safe(self, action: np.ndarray | None) -> np.ndarray | None:
        """Pass a safe action (position-clipped) and restart the limiter from it."""
        if action is None:
            self.reset(None)
            return None
        a = self.clip_position(np.asarray(action, dtype=np.float64))
        if not np.isfinite(a).all():
            self.reset(None)
            return None
        self.reset(a)
        return a.copy()


class Watchdog:
    """Expires when not fed for ``deadline_s``; starts expired (nothing fresh yet)."""

    def __init__(self, deadline_s: float = 0.1, clock=time.monotonic):
        if deadline_s <= 0:
            raise ValueError("watchdog deadline must be positive")
        self.deadline_s = deadline_s
        self.clock = clock
        self.last_fed: float | None = None
        self.trips = 0
        self._tripped = True

    def feed(self, t: float | None = None) -> None:
        self.last_fed = self.clock() if t is None else t
        self._tripped = False

    def expired(self, t: float | None = None) -> bool:
        t = self.clock() if t is None else t
        exp = self.last_fed is None or t - self.last_fed > self.deadline_s
        if exp and not self._tripped:
            self.trips += 1
            self._tripped = True
        return exp


class EStop:
    """Latching emergency stop: once triggered it stays on until explicitly cleared."""

    def __init__(self) -> None:
        self.active = False
        self.reason = ""
        self.count = 0

    def trigger(self, reason: str = "") -> None:
        if not self.active:
            self.count += 1
        self.active = True
        self.reason = reason

    def clear(self) -> None:
        self.active = False
        self.reason = ""


__all__ = ["EStop", "SafetyFilter", "Watchdog", "is_finite_tree"]
