"""A simulated Crazyflie: one L2F drone stepping in real time (500 Hz by default) in its own process.

Each wall-clock period the sim publishes the current observation (``observation.state``, the 22 numbers
of :mod:`robopolicy.sim.quadrotor`), then advances one L2F step with the latest motor command, held
between commands. Like the firmware of a real drone it protects itself:

* **safe mode** (``safe_mode``, a per-robot setting): ``"hover"`` holds the position where safe mode
  began with the on-board SE(3) controller (a hover setpoint); ``"motors_off"`` cuts the motors;
* it enters safe mode on ``stop()`` (what the control loop calls when it has no valid action: the
  spec's ``safe_action`` is ``"stop"``) and when no command arrived for ``command_timeout_s`` (the
  command watchdog); the next policy command leaves it;
* a non-finite or wrongly shaped command is ignored (the last valid one stays in force).

The published ``info`` reports the episode (``steps``, ``done``, ``success``, ``crash``, ``rmse``, ``error``),
the safety state (``safe``, ``safe_entries``, ``watchdog_trips``) and the sim's own timing: how late each
tick was published (``late_p50_us`` and ``late_p99_us`` over the last ``LATENESS_WINDOW`` ticks, ``late_max_us``
over the episode: bounded work per tick in a 500 Hz loop) and ``overruns``
(ticks more than a whole period late, after which the sim does not try to catch up).
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import numpy as np

from robopolicy.robots.base import RobotSpec, RobotState
from robopolicy.robots.sim_process import SimProcessRobot, pack, unpack, wait_for_tick

STATE_KEY = "observation.state"
QUADROTOR_HZ = 500.0
SAFE_MODES = ("hover", "motors_off")
LATENESS_WINDOW = 1000  # ticks (2 s at 500 Hz) behind the published percentiles


class LatenessWindow:
    """Publish-lateness percentiles over the last ``size`` ticks and the maximum over the episode.

    Memory and the work of each summary are bounded by ``size``, however long the episode runs.
    """

    def __init__(self, size: int = LATENESS_WINDOW):
        self._recent: deque[float] = deque(maxlen=size)
        self.max_s = float("-inf")

    def __len__(self) -> int:
        return len(self._recent)

    def clear(self) -> None:
        self._recent.clear()
        self.max_s = float("-inf")

    def add(self, late_s: float) -> None:
        self._recent.append(late_s)
        self.max_s = max(self.max_s, late_s)

    def summary_us(self) -> dict[str, float]:
        late = np.fromiter(self._recent, dtype=np.float64, count=len(self._recent)) * 1e6
        p50, p99 = np.percentile(late, [50, 99])
        return {"late_p50_us": float(p50), "late_p99_us": float(p99), "late_max_us": self.max_s * 1e6}


def quadrotor_spec(hz: float = QUADROTOR_HZ) -> RobotSpec:
    return RobotSpec(name="sim_quadrotor", action_dim=4, action_low=[-1.0] * 4, action_high=[1.0] * 4,
                     control_hz=hz, safe_action="stop", observation_keys=(STATE_KEY,))


def _sim_main(conn, task: str, seed: int, hz: float, episode_s: float | None, safe_mode: str,
              command_timeout_s: float, max_runtime_s: float) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from robopolicy.experts.quadrotor import SE3Controller
    from robopolicy.sim.quadrotor import QuadrotorConfig, QuadrotorVecEnv

    cfg = QuadrotorConfig(task=task, sim_hz=hz, episode_s=episode_s)
    env = QuadrotorVecEnv(1, cfg, seed=seed)
    hover_ctrl = SE3Controller(env.model, lag_inversion_s=cfg.dt)
    hover_cmd = np.full(4, env.model.hover_action)
    period = 1.0 / hz
    episode = -1
    lateness = LatenessWindow()

    def start(s: int) -> tuple[np.ndarray, dict[str, Any]]:
        nonlocal episode
        episode += 1
        lateness.clear()
        obs = env.reset(seed=s)[0]
        return obs, {"episode": episode, "seed": s, "task": task, "steps": 0, "done": False, "success": False,
                     "crash": False, "crash_reason": "", "rmse": float("nan"), "error": float(np.linalg.norm(obs[:3])),
                     "safe": "", "safe_entries": 0, "watchdog_trips": 0, "overruns": 0}

    obs, info = start(seed)
    command = hover_cmd.copy()
    hold_pos = np.zeros(3)
    t_start = time.monotonic()
    next_t = last_cmd_t = t_start
    k = 0

    def enter_safe(reason: str) -> None:
        nonlocal hold_pos
        if info["safe"]:
            return
        info["safe"] = reason
        info["safe_entries"] += 1
        hold_pos = obs[0:3] + env.target_pos[0]  # world position now: hover here
        hover_ctrl.reset()  # it reads the rotor estimate from the observation

    def safe_action() -> np.ndarray:
        if safe_mode == "motors_off":
            return -np.ones(4)
        o = obs.copy()
        o[0:3] = obs[0:3] + env.target_pos[0] - hold_pos
        o[12:15] = obs[12:15] + env.target_vel[0]  # world velocity: the hover setpoint is at rest
        return hover_ctrl(o[None])[0]

    def handle(raw: bytes) -> bool:
        nonlocal command, obs, info, next_t, last_cmd_t
        try:
            msg = unpack(raw)
            kind = msg[0]
        except Exception:  # noqa: BLE001 - the parent is ours, but a bad message must not kill the drone
            return True
        if kind == "cmd":
            a = np.asarray(msg[1], dtype=np.float64)
            if a.shape == (4,) and np.isfinite(a).all():
                command = np.clip(a, -1.0, 1.0)
                last_cmd_t = time.monotonic()
                info["safe"] = ""
        elif kind == "stop":
            enter_safe("stop")
        elif kind == "reset":
            obs, info = start(int(msg[1]))
            command = hover_cmd.copy()
            next_t = last_cmd_t = time.monotonic()
        elif kind == "close":
            return False
        return True

    def deadline() -> float:
        return next_t  # read late: a reset moves it

    try:
        while time.monotonic() - t_start < max_runtime_s:
            if not wait_for_tick(conn, deadline, handle, poll_s=0.0005):
                return
            now = time.monotonic()
            if not info["safe"] and not info["done"] and now - last_cmd_t > command_timeout_s:
                info["watchdog_trips"] += 1
                enter_safe("watchdog")
            lateness.add(now - next_t)
            if k % 50 == 0 or info["done"]:
                info.update(lateness.summary_us())
            conn.send_bytes(pack(["state", {"obs": {STATE_KEY: obs}, "t": next_t, "seq": k, "info": info}]))
            if not info["done"]:
                action = safe_action() if info["safe"] else command
                new_obs, _, _, _, infos = env.step(action[None])
                info["steps"] += 1
                info["error"] = float(infos["error"][0])
                if infos["final"]:
                    st = infos["final"][0][1]
                    info.update(done=True, success=st.success, crash=st.crash, crash_reason=st.crash_reason, rmse=st.rmse)
                    obs = infos["final_obs"][0]
                else:
                    obs = new_obs[0]
            k += 1
            next_t += period
            if time.monotonic() - next_t > period:  # a whole period behind: count it, do not try to catch up
                info["overruns"] += 1
                next_t = time.monotonic()
    except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
        return  # the parent went away


class SimQuadrotorRobot(SimProcessRobot):
    """One simulated Crazyflie behind the :class:`~robopolicy.robots.base.Robot` interface (normalized motor
    commands in [-1, 1]), in a spawned process at ``hz`` (500 by default)."""

    process_name = "sim-quadrotor"

    def __init__(self, task: str = "hover", seed: int = 0, hz: float = QUADROTOR_HZ, episode_s: float | None = None,
                 safe_mode: str = "hover", command_timeout_s: float = 0.02, max_runtime_s: float = 600.0):
        if safe_mode not in SAFE_MODES:
            raise ValueError(f"safe_mode must be one of {SAFE_MODES}, got {safe_mode!r}")
        self.spec = quadrotor_spec(hz)
        self.task, self.seed, self.hz, self.safe_mode = task, seed, hz, safe_mode
        super().__init__(_sim_main, (task, seed, hz, episode_s, safe_mode, command_timeout_s, max_runtime_s))

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        return None  # holding position needs feedback: the sim's own safe mode does it (stop())


__all__ = ["LATENESS_WINDOW", "LatenessWindow", "QUADROTOR_HZ", "SAFE_MODES", "SimQuadrotorRobot", "quadrotor_spec"]
