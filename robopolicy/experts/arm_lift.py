"""Scripted experts for robosuite arm tasks: Lift (approach, descend, grasp, lift) and PickPlaceCan.

Each expert reads the env's observation features (``observation.state`` = eef pos/quat/gripper,
``observation.environment_state`` = object state, object position first) and returns an end-effector
command in metres/radians (:class:`~robopolicy.teleop.base.TeleopCommand`) or, through
``select_action``, the env's normalized OSC action, so it works both as a teleop device for the
recorder and as a policy for :func:`robopolicy.sim.evaluate.evaluate`. Object poses are randomized by
the env; ``noise`` adds Gaussian noise (metres) to the commanded translation for diverse demos.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robopolicy.teleop.base import ArmPose, TeleopCommand, TeleopDevice

POS_SCALE, ROT_SCALE = 0.05, 0.5  # robosuite OSC_POSE output_max (see robopolicy.sim.robosuite_env)


class _PhaseExpert:
    def __init__(self, noise: float = 0.002, gain: float = 1.0, max_step: float = 0.04, seed: int | None = None):
        self.noise, self.gain, self.max_step = noise, gain, max_step
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.phase = 0
        self.counter = 0

    def _toward(self, eef: np.ndarray, target: np.ndarray) -> np.ndarray:
        d = self.gain * (target - eef)
        n = np.linalg.norm(d)
        if n > self.max_step:
            d *= self.max_step / n
        return d + self.rng.normal(0.0, self.noise, 3)

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        cmd = self.command(obs)
        return np.concatenate([np.clip(cmd.delta_pos / POS_SCALE, -1, 1), np.clip(cmd.delta_rot / ROT_SCALE, -1, 1),
                               [cmd.gripper]]).astype(np.float32)

    def command(self, obs: dict[str, np.ndarray]) -> TeleopCommand:
        raise NotImplementedError


class LiftExpert(_PhaseExpert):
    """Above the cube, down to it, close, lift. ``hover`` and ``lift`` heights in metres."""

    def __init__(self, hover: float = 0.06, lift: float = 0.15, grasp_steps: int = 8, **kw: Any):
        self.hover, self.lift, self.grasp_steps = hover, lift, grasp_steps
        super().__init__(**kw)

    def command(self, obs: dict[str, np.ndarray]) -> TeleopCommand:
        eef = np.asarray(obs["observation.state"][:3], dtype=np.float64)
        cube = np.asarray(obs["observation.environment_state"][:3], dtype=np.float64)
        if self.phase == 0:  # above the cube, gripper open
            target, grip = cube + [0, 0, self.hover], -1.0
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02:
                self.phase = 1
        if self.phase == 1:  # descend
            target, grip = cube + [0, 0, -0.005], -1.0
            if abs(eef[2] - target[2]) < 0.01 and np.linalg.norm((cube - eef)[:2]) < 0.015:
                self.phase, self.counter = 2, 0
        if self.phase == 2:  # close
            target, grip = cube + [0, 0, -0.005], 1.0
            self.counter += 1
            if self.counter >= self.grasp_steps:
                self.phase = 3
                self.lift_from = eef.copy()
        if self.phase == 3:  # lift
            target, grip = self.lift_from + [0, 0, self.lift], 1.0
        return TeleopCommand(self._toward(eef, target), np.zeros(3), grip)


class PickPlaceCanExpert(_PhaseExpert):
    """Grasp the can like Lift, carry it above its bin (``bin_pos``, from the env), lower and release."""

    def __init__(self, bin_pos: np.ndarray, hover: float = 0.08, carry: float = 0.12, grasp_steps: int = 8,
                 can_pos_index: int = 7, **kw: Any):
        # robosuite's object-state for PickPlace concatenates Can_to_robot0_eef_pos (3), ..._quat (4), Can_pos, Can_quat
        self.can_pos_index = can_pos_index
        self.bin_pos = np.asarray(bin_pos, dtype=np.float64)
        self.hover, self.carry, self.grasp_steps = hover, carry, grasp_steps
        super().__init__(**kw)

    def command(self, obs: dict[str, np.ndarray]) -> TeleopCommand:
        eef = np.asarray(obs["observation.state"][:3], dtype=np.float64)
        i = self.can_pos_index
        can = np.asarray(obs["observation.environment_state"][i: i + 3], dtype=np.float64)
        grip = -1.0
        if self.phase == 0:
            target = can + [0, 0, self.hover]
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02:
                self.phase = 1
        if self.phase == 1:
            target = can + [0, 0, 0.0]
            if abs(eef[2] - target[2]) < 0.01 and np.linalg.norm((can - eef)[:2]) < 0.015:
                self.phase, self.counter = 2, 0
        if self.phase == 2:
            target, grip = can.copy(), 1.0
            self.counter += 1
            if self.counter >= self.grasp_steps:
                self.phase = 3
                self.lift_from = eef.copy()
        if self.phase == 3:
            target, grip = np.array([eef[0], eef[1], self.bin_pos[2] + self.carry + 0.05]), 1.0
            if abs(eef[2] - target[2]) < 0.02:
                self.phase = 4
        if self.phase == 4:
            target, grip = self.bin_pos + [0, 0, self.carry + 0.05], 1.0
            if np.linalg.norm((target - eef)[:2]) < 0.02:
                self.phase, self.counter = 5, 0
        if self.phase == 5:
            target, grip = self.bin_pos + [0, 0, self.carry], -1.0
        return TeleopCommand(self._toward(eef, target), np.zeros(3), grip)


class ExpertDevice(TeleopDevice):
    """An expert as a teleop device for :func:`robopolicy.teleop.record.record_teleop` (reads ``env.last_obs``)."""

    def __init__(self, expert: _PhaseExpert, env: Any):
        self.expert, self.env = expert, env
        self._obs_id = None

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        if self.env._steps == 0 and self._obs_id != id(self.env.last_obs):  # a new episode started
            self.expert.reset()
        self._obs_id = id(self.env.last_obs)
        return self.expert.command(self.env.last_obs)


def make_expert(env: Any, **kw: Any) -> _PhaseExpert:
    """The scripted expert for ``env.task_name``."""
    if env.task_name == "Lift":
        return LiftExpert(**kw)
    if env.task_name == "PickPlaceCan":
        suite_env = env.unwrapped_suite
        bin_id = suite_env.object_to_id["can"]
        return PickPlaceCanExpert(bin_pos=np.asarray(suite_env.target_bin_placements[bin_id]), **kw)
    raise ValueError(f"no scripted expert for {env.task_name!r}")


def record_expert_demos(env: Any, recorder: Any, num_episodes: int, seed: int = 0, noise: float = 0.002,
                        max_steps: int | None = None) -> Any:
    """Record successful expert demonstrations with the crash-safe recorder (failures are discarded)."""
    from robopolicy.teleop.record import record_teleop

    expert = make_expert(env, noise=noise, seed=seed)
    return record_teleop(env, ExpertDevice(expert, env), recorder, task=env.task, num_episodes=num_episodes,
                         max_steps=max_steps or env.horizon, save_on_success=True, success_hold_steps=5, seed=seed)


def expert_success_rate(env: Any, episodes: int = 20, seed: int = 0, noise: float = 0.002) -> tuple[float, list[int]]:
    """Fraction of seeded episodes the expert solves (and the step at which each first succeeded, -1 if never)."""
    expert = make_expert(env, noise=noise, seed=seed)
    first = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        expert.reset()
        hit = -1
        for t in range(env.horizon):
            obs, _, _, trunc, info = env.step(expert.select_action(obs))
            if info["is_success"]:
                hit = t
                break
            if trunc:
                break
        first.append(hit)
    return float(np.mean([h >= 0 for h in first])), first


__all__ = ["ExpertDevice", "LiftExpert", "PickPlaceCanExpert", "expert_success_rate", "make_expert",
           "record_expert_demos"]
