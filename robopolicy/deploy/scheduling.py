"""Chunk scheduling: time-stamp chunks, drop past actions, blend overlapping chunks, decide when to ask.

Action ``i`` of a chunk predicted from an observation taken at ``t_obs`` refers to
``t_i = t_obs + (i - (To - 1)) * dt`` (the server sends ``t_first = t_obs - (To - 1) * dt`` and
``dt``). When a chunk arrives at ``now``, its actions with ``t_i < now + latency_margin`` are past
and dropped (the last dropped one is kept only as an interpolation anchor: the trajectory is
evaluated at the current time, never replayed). A chunk gives a target only inside
``[t_valid_from, t_last + validity]`` (so a chunk whose actions are all past still holds its last one
until ``t_last + validity``: a one-action policy, T = 1, re-planning every step); outside, :meth:`ChunkScheduler.target` returns None and the
control loop holds its safe action. So no action older than its validity window is ever executed.

Overlapping chunks (the next one is requested before the current one runs out) are combined by:

- ``"rtc"`` (real-time chunking, hard frozen prefix): the new chunk takes over at
  ``t_switch = t_request + d`` (``d`` = the inference delay expected when the request was sent,
  rounded up to the chunk's grid); until then the old chunk keeps executing (the frozen prefix).
  After ``t_switch`` the old chunk's weight decays linearly to 0 over ``rtc_soft_steps`` steps
  (the soft mask; 0 = hard switch). A chunk later than its ``t_switch`` takes over on arrival and is
  counted in ``late_chunks`` (a deadline miss).
- ``"ensemble"`` (ACT temporal ensembling): every valid chunk's target at time t is averaged with
  weights ``w_i = exp(-m * i)``, ``i = 0`` for the oldest.
- ``"replace"``: the newest chunk wins as soon as it is valid.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from robopolicy.deploy.interpolation import Waypoints, blend, weighted_mean

BLEND_MODES = ("rtc", "ensemble", "replace")
INTERPOLATION_MODES = ("linear", "hold")


@dataclasses.dataclass
class ScheduledChunk:
    id: int
    epoch: int  # connection epoch it arrived on (the loop drops chunks of a dead link)
    waypoints: Waypoints
    t_obs: float
    t_valid_from: float
    t_switch: float
    t_received: float

    @property
    def t_end(self) -> float:
        return self.waypoints.t_end

    def valid_at(self, t: float) -> bool:
        return self.t_valid_from <= t <= self.t_end

    def at(self, t: float) -> np.ndarray | None:
        return self.waypoints(t) if self.valid_at(t) else None


@dataclasses.dataclass
class ScheduleStats:
    chunks: int = 0
    actions_dropped_past: int = 0
    chunks_discarded: int = 0  # entirely in the past on arrival
    late_chunks: int = 0  # arrived after their planned switch time (deadline miss)


class ChunkScheduler:
    def __init__(self, n_obs_steps: int, horizon: int, n_action_steps: int, dt: float, mode: str = "rtc",
                 latency_margin_s: float = 0.0, validity_s: float | None = None, ensemble_m: float = 0.01,
                 rtc_soft_steps: int = 0, request_lead_s: float = 0.0, max_chunks: int = 8,
                 angle_dims: tuple[int, ...] = (), angle_period: float = 2 * math.pi, interpolation: str = "linear"):
        """``angle_dims``: action dimensions that are angles wrapping with ``angle_period`` (interpolated and
        blended the short way round; see :mod:`robopolicy.deploy.interpolation`). ``interpolation``: ``"linear"``
        between a chunk's actions, or ``"hold"`` each one until the next (how demonstrations recorded at the
        policy's rate commanded the arm)."""
        if mode not in BLEND_MODES:
            raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"interpolation must be one of {INTERPOLATION_MODES}, got {interpolation!r}")
        self.hold = interpolation == "hold"
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.dt = float(dt)
        self.mode = mode
        self.latency_margin_s = float(latency_margin_s)
        self.validity_s = self.dt if validity_s is None else float(validity_s)
        self.ensemble_m = float(ensemble_m)
        self.rtc_soft_steps = int(rtc_soft_steps)
        self.request_lead_s = float(request_lead_s)
        self.max_chunks = max_chunks
        self.angle_dims = tuple(int(i) for i in angle_dims)
        self.angle_period = float(angle_period)
        self.chunks: list[ScheduledChunk] = []  # oldest first
        self.stats = ScheduleStats()
        self._next_id = 0

    # ---- chunks in ---------------------------------------------------------------------------------
    def action_times(self, t_first: float, n: int, dt: float | None = None) -> np.ndarray:
        return t_first + np.arange(n) * (self.dt if dt is None else dt)

    def add_chunk(self, actions: np.ndarray, t_first: float, now: float, dt: float | None = None,
                  t_request: float | None = None, expected_delay_s: float | None = None, t_obs: float | None = None,
                  epoch: int = 0) -> ScheduledChunk | None:
        """Schedule a chunk received at ``now``; returns it, or None if all its actions were past."""
        actions = np.asarray(actions, dtype=np.float64)
        dt = self.dt if dt is None else float(dt)
        times = self.action_times(t_first, len(actions), dt)
        self.stats.chunks += 1
        t_valid_from = now + self.latency_margin_s
        past = times < t_valid_from
        n_past = int(past.sum())
        self.stats.actions_dropped_past += n_past
        if n_past == len(times) and times[-1] + self.validity_s < t_valid_from:
            self.stats.chunks_discarded += 1  # even the last action's hold window is over
            return None
        first = max(n_past - 1, 0)  # keep the last past waypoint as an interpolation anchor only
        wp = Waypoints(times[first:], actions[first:], self.validity_s, self.angle_dims, self.angle_period, self.hold)
        t_switch = t_valid_from
        if self.mode == "rtc" and t_request is not None:
            d = 0.0 if expected_delay_s is None else max(0.0, expected_delay_s)
            planned = t_request + d + self.latency_margin_s
            future = times[times >= planned - 1e-9]
            planned_switch = float(future[0]) if len(future) else math.inf
            if planned_switch < t_valid_from:  # arrived after its planned switch: deadline miss
                self.stats.late_chunks += 1
            t_switch = max(planned_switch, t_valid_from) if math.isfinite(planned_switch) else t_valid_from
        t0 = t_obs if t_obs is not None else t_first + (self.n_obs_steps - 1) * dt
        chunk = ScheduledChunk(self._next_id, epoch, wp, t0, t_valid_from, t_switch, now)
        self._next_id += 1
        self.chunks.append(chunk)
        self.chunks = self.chunks[-self.max_chunks:]
        return chunk

    def clear(self) -> None:
        self.chunks.clear()

    def prune(self, t: float) -> None:
        self.chunks = [c for c in self.chunks if c.t_end >= t]
        for c in self.chunks:
            c.waypoints.prune(t)

    # ---- targets out ---------------------------------------------------------------------------------
    def target(self, t: float) -> tuple[np.ndarray | None, ScheduledChunk | None]:
        """Target at time ``t`` and the chunk that (mainly) produced it; (None, None) if nothing is valid."""
        self.prune(t)
        if self.mode == "ensemble":
            valid = [(c, a) for c in self.chunks if (a := c.at(t)) is not None]
            if not valid:
                return None, None
            w = np.exp(-self.ensemble_m * np.arange(len(valid)))  # oldest first
            value = weighted_mean([a for _, a in valid], w, self.angle_dims, self.angle_period)
            return value, valid[-1][0]
        chosen = None
        for k in range(len(self.chunks) - 1, -1, -1):  # newest first
            c = self.chunks[k]
            if not c.valid_at(t):
                continue
            if self.mode == "rtc" and t < c.t_switch - 1e-9:  # inside the frozen prefix: an older chunk executes
                if any(o.valid_at(t) for o in self.chunks[:k]):
                    continue
            chosen = k
            break
        if chosen is None:
            return None, None
        c = self.chunks[chosen]
        value = c.at(t)
        if self.mode == "rtc" and self.rtc_soft_steps > 0 and t >= c.t_switch - 1e-9:
            older = next((o for o in reversed(self.chunks[:chosen]) if o.valid_at(t)), None)
            if older is not None:
                w_old = max(0.0, 1.0 - (t - c.t_switch + self.dt) / ((self.rtc_soft_steps + 1) * self.dt))
                if w_old > 0:
                    value = blend(value, older.at(t), w_old, self.angle_dims, self.angle_period)
        return value, c

    # ---- when to ask for the next chunk ---------------------------------------------------------------
    def plan_end(self) -> float:
        """Time by which the next chunk should take over: the newest chunk's Ta actions from ``t_obs``."""
        if not self.chunks:
            return -math.inf
        newest = self.chunks[-1]
        return newest.t_obs + self.n_action_steps * self.dt

    def needs_request(self, now: float, expected_delay_s: float) -> bool:
        """Ask when ``now + expected delay + lead`` reaches the end of the newest chunk's Ta actions."""
        return now + expected_delay_s + self.request_lead_s >= self.plan_end()


__all__ = ["BLEND_MODES", "INTERPOLATION_MODES", "ChunkScheduler", "ScheduleStats", "ScheduledChunk"]
