"""Geometric SE(3) controller for the Crazyflie simulator, DART-noise recording and a setpoint "teleop" path.

The expert acts on exactly what a policy sees -- the 22-number ``observation.state`` of
:mod:`robopolicy.sim.quadrotor` (position/velocity error to the target, rotation matrix, body rates,
rotor-state estimate) -- plus, optionally, the target's feed-forward acceleration, and outputs the same
normalized motor commands in [-1, 1]. Batched: obs (n, 22) -> actions (n, 4).

Control law (Lee, Leok & McClamroch 2010, with saturations):
  a_des = -kp e_p - kd e_v + a_ff + g z  (horizontal part limited to max_tilt, |e_p| capped)
  F = m a_des . b3,  R_des from (b3_des = a_des / |a_des|, yaw_des)
  tau = J (-kR e_R - kw w) + w x J w,  e_R = vee(R_des^T R - R^T R_des) / 2
  per-rotor thrusts from the L2F rotor geometry (mixer), then the inverse thrust curve -> action.

Recording (:func:`record_demonstrations`) uses DART (Laskey et al. 2017): the executed action is the
expert's plus Gaussian noise, the recorded label is the clean expert action, so the dataset covers
the states a slightly-wrong learner will visit. Episodes are written to LeRobot v3.0 with
:class:`~robopolicy.data.writer.LeRobotDatasetWriter`.

Teleop: :class:`SetpointTeleop` turns a stream of position (or velocity) setpoints -- any iterator,
e.g. :func:`scripted_setpoints` -- into targets for the same controller and the same recorder.
Keyboard/gamepad devices are not available here (:class:`KeyboardSetpoints` raises).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.sim.quadrotor import (
    ACTION_DIM,
    ACTION_KEY,
    OBS_DIM,
    OBS_NAMES,
    STATE_KEY,
    CrazyflieModel,
    EpisodeStats,
    QuadrotorConfig,
    QuadrotorVecEnv,
    crazyflie_model,
)


@dataclasses.dataclass
class SE3Gains:
    kp: tuple[float, float, float] = (5.0, 5.0, 6.0)  # 1/s^2
    kd: tuple[float, float, float] = (3.5, 3.5, 4.0)  # 1/s
    kR: tuple[float, float, float] = (120.0, 120.0, 40.0)  # 1/s^2 (scaled by J)
    kw: tuple[float, float, float] = (18.0, 18.0, 10.0)  # 1/s (scaled by J)
    max_tilt_deg: float = 35.0
    max_pos_error: float = 1.0  # m: larger errors are clipped (bounded approach speed)
    min_acc_z: float = 2.0  # m/s^2: never command less vertical acceleration than this (plus nothing below 0 thrust)


def _vee(m: np.ndarray) -> np.ndarray:
    return np.stack([m[:, 2, 1], m[:, 0, 2], m[:, 1, 0]], axis=-1)


class SE3Controller:
    def __init__(self, model: CrazyflieModel | None = None, gains: SE3Gains | None = None, yaw: float = 0.0,
                 lag_inversion_s: float = 0.01, motor_compensation: bool = True,
                 use_observed_rotor_state: bool = True):
        self.model = model or crazyflie_model()
        self.gains = gains or SE3Gains()
        self.yaw = yaw
        # Rotor lag inversion: the expert keeps its own estimate of each rotor's throttle (driven by its
        # past commands through the same first-order model; initial rotor speeds are unknown to it and
        # taken as hover) and commands what reaches the desired throttle within ``lag_inversion_s``.
        # 10 ms (one step at 100 Hz) whatever the control rate: demos at 500 Hz keep the same smooth
        # commands, where a one-tick (2 ms) inversion would ask five times the step and saturate the motors.
        self.motor_compensation = motor_compensation
        # The observation carries the same rotor estimate (the env filters the executed commands): using it
        # makes the expert a function of the observation alone, which is what a cloned policy can learn.
        self.use_observed_rotor_state = use_observed_rotor_state
        self.lag_inversion_s = lag_inversion_s
        self.k_rise = 1.0 - math.exp(-lag_inversion_s / self.model.time_constant_rising)
        self.k_fall = 1.0 - math.exp(-lag_inversion_s / self.model.time_constant_falling)
        self.u_est: np.ndarray | None = None
        m = self.model
        x, y = m.rotor_positions[:, 0], m.rotor_positions[:, 1]
        kz = m.torque_constants * m.rotor_torque_directions[:, 2]
        # [F, tau_x, tau_y, tau_z] = A f: tau = sum r_i x (0, 0, f_i)
        self.mixer = np.linalg.inv(np.stack([np.ones(4), y, -x, kz]))
        self.f_min = float(m.action_to_thrust(np.array([-1.0]))[0])
        self.f_max = float(m.action_to_thrust(np.array([1.0]))[0])

    def reset(self, mask: np.ndarray | None = None, throttle: np.ndarray | None = None) -> None:
        """Re-initialize the rotor estimate (all envs, or where ``mask`` is True): to the privileged
        initial rotor ``throttle`` (n, 4) when given (``infos['initial_throttle']``), else to hover."""
        if throttle is not None:
            throttle = np.asarray(throttle, dtype=np.float64)
            if self.u_est is None or mask is None or self.u_est.shape != throttle.shape:
                self.u_est = throttle.copy()
            else:
                m = np.asarray(mask, dtype=bool)
                self.u_est[m] = throttle[m]
        elif self.u_est is None or mask is None:
            self.u_est = None
        else:
            self.u_est[np.asarray(mask, dtype=bool)] = self._u_hover

    @property
    def _u_hover(self) -> float:
        m = self.model
        return (m.hover_action + 1) / 2 * (m.action_max - m.action_min) + m.action_min

    def _compensate(self, action: np.ndarray) -> np.ndarray:
        m = self.model
        half = (m.action_max - m.action_min) / 2
        u_des = action * half + m.action_min + half
        if self.u_est is None or self.u_est.shape != u_des.shape:
            self.u_est = np.full(u_des.shape, self._u_hover)
        k = np.where(u_des > self.u_est, self.k_rise, self.k_fall)
        u_cmd = np.clip(self.u_est + (u_des - self.u_est) / k, m.action_min, m.action_max)
        k = np.where(u_cmd > self.u_est, self.k_rise, self.k_fall)
        self.u_est = self.u_est + (u_cmd - self.u_est) * k
        return (u_cmd - m.action_min - half) / half

    def __call__(self, obs: np.ndarray, target_acc: np.ndarray | None = None) -> np.ndarray:
        g, m = self.gains, self.model
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        n = len(obs)
        e_p = obs[:, 0:3]
        norm = np.linalg.norm(e_p, axis=1, keepdims=True)
        e_p = e_p * np.minimum(1.0, g.max_pos_error / np.maximum(norm, 1e-9))
        R = obs[:, 3:12].reshape(n, 3, 3)
        e_v = obs[:, 12:15]
        w = obs[:, 15:18]
        a = -np.asarray(g.kp) * e_p - np.asarray(g.kd) * e_v
        if target_acc is not None:
            a = a + np.atleast_2d(target_acc)
        a[:, 2] = np.maximum(a[:, 2] + m.gravity, g.min_acc_z)
        max_xy = a[:, 2] * math.tan(math.radians(g.max_tilt_deg))
        xy = np.linalg.norm(a[:, :2], axis=1)
        a[:, :2] *= np.minimum(1.0, max_xy / np.maximum(xy, 1e-9))[:, None]
        b3 = R[:, :, 2]
        thrust = m.mass * np.maximum(np.einsum("ni,ni->n", a, b3), 0.0)
        b3d = a / np.linalg.norm(a, axis=1, keepdims=True)
        b1c = np.array([math.cos(self.yaw), math.sin(self.yaw), 0.0])
        b2d = np.cross(b3d, b1c)
        b2d /= np.maximum(np.linalg.norm(b2d, axis=1, keepdims=True), 1e-9)
        b1d = np.cross(b2d, b3d)
        Rd = np.stack([b1d, b2d, b3d], axis=-1)
        e_R = 0.5 * _vee(np.transpose(Rd, (0, 2, 1)) @ R - np.transpose(R, (0, 2, 1)) @ Rd)
        alpha = -np.asarray(g.kR) * e_R - np.asarray(g.kw) * w
        Jw = w @ m.J.T
        tau = alpha @ m.J.T + np.cross(w, Jw)
        f = np.concatenate([thrust[:, None], tau], axis=1) @ self.mixer.T
        # attitude priority: shift the collective so the torque survives the rotor limits
        f = f + np.maximum(self.f_min - f.min(axis=1, keepdims=True), 0.0)
        f = f - np.maximum(f.max(axis=1, keepdims=True) - self.f_max, 0.0)
        f = np.clip(f, self.f_min, self.f_max)
        action = m.thrust_to_action(f).reshape(n, ACTION_DIM)
        if self.motor_compensation:
            if self.use_observed_rotor_state:  # the observation's rotor estimate, in throttle units
                half = (m.action_max - m.action_min) / 2
                self.u_est = obs[:, 18:22] * half + m.action_min + half
            action = self._compensate(action)
        return action.astype(np.float32)


def expert_rollout(task: str = "hover", n_episodes: int = 16, n_envs: int = 16, seed: int = 0,
                   config: QuadrotorConfig | None = None, controller: SE3Controller | None = None,
                   dart_noise: float = 0.0) -> list[EpisodeStats]:
    """Evaluate the expert (optionally with executed-action noise) on ``task``."""
    from robopolicy.sim.quadrotor import rollout

    ctrl = controller or SE3Controller()
    rng = np.random.default_rng(seed + 1)

    ctrl.reset()

    def act(obs: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
        if "reset" in infos:
            ctrl.reset(infos["reset"], infos.get("initial_throttle"))
        a = ctrl(obs, infos.get("target_acc"))
        if dart_noise:
            a = np.clip(a + rng.normal(0.0, dart_noise, a.shape), -1, 1)
        return a

    return rollout(act, n_episodes, task=task, n_envs=n_envs, seed=seed, config=config)


DATASET_FEATURES = {
    STATE_KEY: {"dtype": "float32", "shape": [OBS_DIM], "names": list(OBS_NAMES)},
    ACTION_KEY: {"dtype": "float32", "shape": [ACTION_DIM], "names": ["m1", "m2", "m3", "m4"]},
    "observation.target": {"dtype": "float32", "shape": [9],
                           "names": ["px", "py", "pz", "vx", "vy", "vz", "ax", "ay", "az"]},
}


def record_demonstrations(root: str | Path, task: str = "hover", n_episodes: int = 100, n_envs: int = 32,
                          seed: int = 0, dart_noise: float = 0.05, only_successful: bool = True,
                          config: QuadrotorConfig | None = None, overwrite: bool = False,
                          controller: SE3Controller | None = None,
                          driver: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Record expert episodes to a LeRobot v3.0 dataset; returns counts and the metrics of what flew.

    Labels are the clean expert actions; the executed actions carry DART noise of std ``dart_noise``
    (normalized motor units). With ``only_successful`` failed episodes are dropped (and counted).

    ``driver`` (DAgger): a trained policy, ``driver(obs (n, 22)) -> actions (n, 4)``, flies instead of the expert;
    every visited state is still labelled with the expert's action. So the data covers the states the policy
    itself drifts into, which expert demonstrations never visit, and retraining on both teaches the way back.
    The expert's label is a function of the observation alone (it reads the rotor state from it), so it does not
    matter whose commands got the drone there.
    """
    from robopolicy.data.writer import LeRobotDatasetWriter

    cfg = dataclasses.replace(config or QuadrotorConfig(), task=task)
    ctrl = controller or SE3Controller()
    n_envs = max(1, min(n_envs, n_episodes))
    env = QuadrotorVecEnv(n_envs, cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    obs = env.reset(seed=seed)
    ctrl.reset(throttle=env.initial_throttle)
    target_acc = env.target_acc.copy()
    buffers: list[dict[str, list[np.ndarray]]] = [{k: [] for k in DATASET_FEATURES} for _ in range(n_envs)]
    stats: list[EpisodeStats] = []
    kept = 0
    started = n_envs
    active = np.ones(n_envs, dtype=bool)
    with LeRobotDatasetWriter(root, fps=int(round(cfg.sim_hz)), features=DATASET_FEATURES, robot_type="crazyflie_l2f",
                              overwrite=overwrite) as writer:
        while len(stats) < n_episodes:
            label = ctrl(obs, target_acc)
            flown = label if driver is None else np.asarray(driver(obs), dtype=np.float32).reshape(label.shape)
            executed = np.clip(flown + rng.normal(0.0, dart_noise, flown.shape), -1, 1) if dart_noise else flown
            targets = np.concatenate([env.target_pos, env.target_vel, env.target_acc], axis=1)
            for i in np.flatnonzero(active):
                b = buffers[i]
                b[STATE_KEY].append(obs[i])
                b[ACTION_KEY].append(label[i])
                b["observation.target"].append(targets[i])
            obs, _, _, _, infos = env.step(executed)
            target_acc = infos["target_acc"] if not infos["final"] else env.target_acc.copy()
            if infos["final"]:
                ctrl.reset(np.isin(np.arange(n_envs), [i for i, _ in infos["final"]]), env.initial_throttle)
            for i, st in infos["final"]:
                if active[i] and len(stats) < n_episodes:
                    stats.append(st)
                    if st.success or not only_successful:
                        writer.add_episode({k: np.stack(v).astype(np.float32) for k, v in buffers[i].items()},
                                           task=f"quadrotor {task}")
                        kept += 1
                buffers[i] = {k: [] for k in DATASET_FEATURES}
                if started >= n_episodes:
                    active[i] = False
                else:
                    started += 1
    from robopolicy.sim.quadrotor import summarize

    return {"root": str(root), "episodes_run": len(stats), "episodes_kept": kept, "dart_noise": dart_noise,
            "flown_by": "expert" if driver is None else "policy", "flown": summarize(stats)}


# ---- teleop: a setpoint stream feeding the same controller and recorder --------------------------


@dataclasses.dataclass
class Setpoint:
    """A position setpoint (m, world frame) with optional velocity feed-forward, or a velocity setpoint."""

    position: np.ndarray | None = None
    velocity: np.ndarray | None = None


def scripted_setpoints(waypoints: Iterable[Iterable[float]], hold_steps: int = 200) -> Iterator[Setpoint]:
    """Each waypoint held for ``hold_steps`` control steps: the stand-in for an operator's device."""
    for wp in waypoints:
        p = np.asarray(list(wp), dtype=np.float64)
        for _ in range(hold_steps):
            yield Setpoint(position=p)


class KeyboardSetpoints:
    """Keyboard / gamepad setpoint device: not available in this headless environment."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise RuntimeError("keyboard/gamepad teleop is not available here (headless, no input device); "
                           "use scripted_setpoints(...) or any iterator of Setpoint")


class SetpointTeleop:
    """Fly one simulated drone from a setpoint stream with the SE(3) controller; record to LeRobot v3.0.

    A velocity setpoint moves an internal position setpoint (integrated at the control rate), so both
    kinds end in the same observation convention: state minus the (moving) setpoint.
    """

    def __init__(self, config: QuadrotorConfig | None = None, seed: int = 0, controller: SE3Controller | None = None):
        self.config = dataclasses.replace(config or QuadrotorConfig(), task="hover", episode_s=1e6)
        self.env = QuadrotorVecEnv(1, self.config, seed=seed)
        self.ctrl = controller or SE3Controller(self.env.model, lag_inversion_s=self.config.dt)
        self.seed = seed

    def run(self, setpoints: Iterable[Setpoint]) -> dict[str, np.ndarray]:
        """One episode (until the stream ends or a crash); returns the arrays of the dataset features."""
        env = self.env
        obs = env.reset(seed=self.seed)
        self.ctrl.reset(throttle=env.initial_throttle)
        sp = np.zeros(3)
        out: dict[str, list[np.ndarray]] = {k: [] for k in DATASET_FEATURES}
        for s in setpoints:
            vel = np.zeros(3)
            if s.velocity is not None:
                vel = np.asarray(s.velocity, dtype=np.float64)
                sp = sp + vel * self.config.dt
            if s.position is not None:
                sp = np.asarray(s.position, dtype=np.float64)
            env.set_targets(sp, vel, np.zeros(3))
            obs = env._observe()  # re-express the current state relative to the new setpoint
            action = self.ctrl(obs)
            out[STATE_KEY].append(obs[0])
            out[ACTION_KEY].append(action[0])
            out["observation.target"].append(np.concatenate([sp, vel, np.zeros(3)]))
            obs, _, terminated, _, infos = env.step(action)
            if terminated[0]:
                break
        return {k: np.stack(v).astype(np.float32) for k, v in out.items()}

    def record(self, root: str | Path, streams: Iterable[Iterable[Setpoint]], task: str = "quadrotor teleop",
               overwrite: bool = False) -> int:
        from robopolicy.data.writer import LeRobotDatasetWriter

        n = 0
        with LeRobotDatasetWriter(root, fps=int(round(self.config.sim_hz)), features=DATASET_FEATURES,
                                  robot_type="crazyflie_l2f", overwrite=overwrite) as writer:
            for stream in streams:
                writer.add_episode(self.run(stream), task=task)
                n += 1
        return n


__all__ = ["DATASET_FEATURES", "KeyboardSetpoints", "SE3Controller", "SE3Gains", "Setpoint", "SetpointTeleop",
           "expert_rollout", "record_demonstrations", "scripted_setpoints"]
