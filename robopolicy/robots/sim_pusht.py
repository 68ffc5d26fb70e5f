"""A simulated PushT robot: the gym-pusht sim stepping in real time in its own process.

The sim process takes one physics step of the env (``1 / hz`` seconds of simulated time, 10 Hz
like the demonstrations) per wall-clock period, using the latest commanded target (it holds it
between steps, whatever rate commands arrive at). The observation computed by a step is
published when its time comes, stamped with that time (``time.monotonic()``, shared by processes
on one machine); the target in force at that instant drives the next step. So a policy that
answered instantly would see exactly the direct-evaluation sequence; a real one sees its latency.

Parent and sim talk over a ``multiprocessing`` pipe carrying msgpack bytes (nothing pickled;
:mod:`robopolicy.robots.sim_process`).
The sim stops by itself when the parent goes away, on ``close``, or after ``max_runtime_s``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from robopolicy.robots.base import RobotSpec, RobotState
from robopolicy.robots.sim_process import SimProcessRobot, wait_for_tick
from robopolicy.robots.sim_process import pack as _pack
from robopolicy.robots.sim_process import unpack as _unpack

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
PUSHT_HZ = 10.0


def pusht_spec(max_velocity: float = 2000.0, max_acceleration: float = 40000.0, obs_mode: str = "state",
               safe_action: str | np.ndarray = "hold") -> RobotSpec:
    keys = {"state": (STATE_KEY, ENV_STATE_KEY), "image": (STATE_KEY, "observation.image"),
            "all": (STATE_KEY, ENV_STATE_KEY, "observation.image")}[obs_mode]
    return RobotSpec(name="sim_pusht", action_dim=2, action_low=[0.0, 0.0], action_high=[512.0, 512.0],
                     max_velocity=max_velocity, max_acceleration=max_acceleration, control_hz=PUSHT_HZ,
                     safe_action=safe_action, observation_keys=keys)


def _sim_main(conn, obs_mode: str, seed: int, hz: float, max_runtime_s: float, max_episode_steps: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from robopolicy.sim.pusht import make_pusht_env

    env = make_pusht_env(obs_mode=obs_mode, max_episode_steps=max_episode_steps)
    period = 1.0 / hz
    episode = 0

    def start(s: int):
        obs, info = env.reset(seed=s)
        return obs, {"coverage": float(info["coverage"]), "is_success": bool(info["is_success"]), "done": False,
                     "steps": 0, "max_coverage": float(info["coverage"]), "episode": episode, "seed": s}

    obs, info = start(seed)
    target = np.asarray(obs[STATE_KEY], dtype=np.float64)
    t_start = time.monotonic()
    next_t = t_start
    k = 0
    overruns = 0

    def handle(raw: bytes) -> bool:
        nonlocal target, obs, info, episode, next_t
        msg = _unpack(raw)
        kind = msg[0]
        if kind == "cmd":
            a = np.asarray(msg[1], dtype=np.float64)
            if a.shape == (2,) and np.isfinite(a).all():  # the sim's own last line of defence
                target = np.clip(a, 0.0, 512.0)
        elif kind == "stop":
            target = np.asarray(env.unwrapped.agent.position, dtype=np.float64)
        elif kind == "reset":
            episode += 1
            obs, info = start(int(msg[1]))
            target = np.asarray(obs[STATE_KEY], dtype=np.float64)
            next_t = time.monotonic()
        elif kind == "close":
            return False
        return True

    def deadline() -> float:
        return next_t  # read late: a reset moves it

    try:
        while time.monotonic() - t_start < max_runtime_s:
            if not wait_for_tick(conn, deadline, handle, poll_s=0.002):
                return
            conn.send_bytes(_pack(["state", {"obs": obs, "t": next_t, "seq": k, "info": {**info, "overruns": overruns}}]))
            if not info["done"]:
                obs, _, terminated, truncated, step_info = env.step(target.astype(np.float32))
                cov = float(step_info["coverage"])
                info = {**info, "coverage": cov, "is_success": bool(step_info["is_success"]),
                        "done": bool(terminated or truncated), "steps": info["steps"] + 1,
                        "max_coverage": max(info["max_coverage"], cov), "target": target.copy()}
            k += 1
            next_t += period
            if time.monotonic() - next_t > period:  # fell a whole period behind: do not try to catch up
                overruns += 1
                next_t = time.monotonic()
    except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
        return  # the parent went away
    finally:
        env.close()


class SimPushTRobot(SimProcessRobot):
    """PushT behind the :class:`~robopolicy.robots.base.Robot` interface, in a spawned process."""

    process_name = "sim-pusht"

    def __init__(self, seed: int = 0, obs_mode: str = "state", hz: float = PUSHT_HZ, max_runtime_s: float = 600.0,
                 max_episode_steps: int = 300, **spec_kw: Any):
        self.spec = pusht_spec(obs_mode=obs_mode, **spec_kw)
        self.spec.control_hz = hz
        self.seed, self.obs_mode, self.hz = seed, obs_mode, hz
        self.max_runtime_s, self.max_episode_steps = max_runtime_s, max_episode_steps
        super().__init__(_sim_main, (obs_mode, seed, hz, max_runtime_s, max_episode_steps))

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        state = state or self._latest
        return None if state is None else np.asarray(state.observation[STATE_KEY], dtype=np.float64).copy()


__all__ = ["PUSHT_HZ", "SimPushTRobot", "pusht_spec"]
