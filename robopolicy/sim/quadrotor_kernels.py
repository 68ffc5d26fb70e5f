"""Per-step bookkeeping of :class:`robopolicy.sim.quadrotor.QuadrotorVecEnv`, compiled with numba.

L2F steps 1,024 drones in about 0.2 ms. Done as numpy calls, the rest of a step (rotor-lag estimate,
observation, tracking error, metrics, crash checks) is some forty calls over small, strided arrays that
cost more than half of that; one pass per drone in compiled code costs a few microseconds, which keeps
our API within the 0.8x of raw L2F the simulator must hold (``bench/quadrotor_throughput.py``).
Compiled once per machine (``cache=True`` stores the machine code next to this file).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

STATE_DIM = 18  # the part of L2F's observation we use: pos(3) R(9) vel(3) angvel(3)
ROTORS = 4
POS, VEL = 0, 12  # where L2F's observation holds the position and the linear velocity
COS_TILT_COLUMN = 11  # R[2, 2] in L2F's observation: the cosine of the tilt


@njit(cache=True, nogil=True)
def clip_commands(actions: np.ndarray, commands: np.ndarray) -> None:
    """commands = actions clipped to [-1, 1]; NaN becomes -1 (a non-finite command means motors off)."""
    for i in range(commands.shape[0]):
        for j in range(ROTORS):
            c = actions[i, j]
            commands[i, j] = -1.0 if not c >= -1.0 else (1.0 if c > 1.0 else c)


@njit(cache=True, nogil=True, inline="always")
def _observe_state(raw: np.ndarray, target_pos: np.ndarray, target_vel: np.ndarray, obs: np.ndarray,
                   i: int) -> None:
    """obs[i, :18]: L2F's position and velocity relative to the target (in float32), rotation and body rates."""
    for j in range(STATE_DIM):
        obs[i, j] = raw[i, j]
    for j in range(3):
        obs[i, POS + j] = raw[i, POS + j] - np.float32(target_pos[i, j])
        obs[i, VEL + j] = raw[i, VEL + j] - np.float32(target_vel[i, j])


@njit(cache=True, nogil=True)
def observe_rows(raw: np.ndarray, rotor_estimate: np.ndarray, target_pos: np.ndarray, target_vel: np.ndarray,
                 obs: np.ndarray, rows: np.ndarray) -> None:
    """obs[i] = (L2F state relative to the target, rotor estimate) for each i in ``rows``."""
    for i in rows:
        _observe_state(raw, target_pos, target_vel, obs, i)
        for j in range(ROTORS):
            obs[i, STATE_DIM + j] = rotor_estimate[i, j]


@njit(cache=True, nogil=True)
def advance(raw: np.ndarray, commands: np.ndarray, rotor_estimate: np.ndarray, k_rise: np.float32,
            k_fall: np.float32, target_pos: np.ndarray, target_vel: np.ndarray, t: np.ndarray, rmse_from_step: int,
            sq_err: np.ndarray, n_err: np.ndarray, in_radius_run: np.ndarray, success_radius: float, bound: float,
            ground_depth: float, cos_tilt_limit: float, episode_steps: int, obs: np.ndarray, err: np.ndarray,
            crash: np.ndarray, truncated: np.ndarray, reward: np.ndarray, done: np.ndarray) -> int:
    """Everything after L2F's step, for every drone; returns how many episodes ended (indices in ``done``).

    ``t`` is the step count already including this step. A non-finite state is a crash.
    """
    n_done = 0
    for i in range(obs.shape[0]):
        for j in range(ROTORS):  # first-order rotor lag, faster up than down
            diff = commands[i, j] - rotor_estimate[i, j]
            rotor_estimate[i, j] += diff * (k_rise if diff > 0 else k_fall)
            obs[i, STATE_DIM + j] = rotor_estimate[i, j]
        _observe_state(raw, target_pos, target_vel, obs, i)
        e = math.sqrt(obs[i, 0] * obs[i, 0] + obs[i, 1] * obs[i, 1] + obs[i, 2] * obs[i, 2])
        err[i] = e
        capped = min(e, 1e3) if e == e else 1e3  # NaN -> 1e3
        if t[i] > rmse_from_step:
            sq_err[i] += capped * capped
            n_err[i] += 1
        in_radius_run[i] = in_radius_run[i] + 1 if e < success_radius else 0
        state_sum = 0.0  # float64: finite for any finite float32 state, so NaN or inf anywhere shows here
        for j in range(STATE_DIM):
            state_sum += raw[i, j]
        x, y, z = raw[i, 0], raw[i, 1], raw[i, 2]
        ok = (math.isfinite(state_sum) and abs(x) <= bound and abs(y) <= bound and abs(z) <= bound
              and z >= -ground_depth and raw[i, COS_TILT_COLUMN] >= cos_tilt_limit)
        crash[i] = not ok
        truncated[i] = ok and t[i] >= episode_steps
        reward[i] = -capped - (0.0 if ok else 10.0)
        if crash[i] or truncated[i]:
            done[n_done] = i
            n_done += 1
    return n_done
