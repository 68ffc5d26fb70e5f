"""Planar box pushing in Newton (NVIDIA Warp physics), vectorized over N environments in one process.

Each environment is its own Newton world: a 10 cm box resting on the (shared) ground plane and a kinematic
spherical pusher that the action drives in the plane. The policy commands the pusher's next target position
(like PushT); the pusher moves toward it at a bounded speed and the box is pushed by contact (XPBD). Success is
the box's centre within ``SUCCESS_RADIUS`` of the goal; the goal and the box's start are drawn per environment
from that environment's own seed, so episode ``seed`` is reproducible whatever else runs beside it.

Why a kinematic pusher and not the Franka: Newton's Franka comes from ``newton.utils.download_asset`` (a GitHub
download at run time, which this project may not do), and a 7-DoF arm in XPBD needs tens of substeps per control
step on CPU. A position-controlled pusher is what an arm's end effector does under an operational-space
controller; docs/newton.md says how to swap the Franka in on a GPU machine.

Features (LeRobot names): ``observation.state`` = pusher (x, y); ``observation.environment_state`` = box (x, y,
cos yaw, sin yaw) and goal (x, y); ``action`` = pusher target (x, y). Metres, world frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import newton
import numpy as np
import warp as wp

BOX_HALF = 0.05  # m, half side of the cube
PUSHER_RADIUS = 0.02  # m
WORKSPACE = 0.25  # m, the pusher and targets stay inside [-WORKSPACE, WORKSPACE]^2
SUCCESS_RADIUS = 0.03  # m, box centre to goal
FPS = 10  # control rate (Hz)
SUBSTEPS = 10  # physics steps per control step, 10 ms each
MAX_SPEED = 0.2  # m/s, pusher speed limit
MAX_STEPS = 120  # episode length at FPS

STATE_DIM = 2
ENV_STATE_DIM = 6
ACTION_DIM = 2

FEATURES: dict[str, dict] = {
    "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": ["pusher_x", "pusher_y"]},
    "observation.environment_state": {
        "dtype": "float32", "shape": [ENV_STATE_DIM],
        "names": ["box_x", "box_y", "box_cos_yaw", "box_sin_yaw", "goal_x", "goal_y"],
    },
    "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": ["target_x", "target_y"]},
}


@wp.kernel
def _move_pushers(body_q: wp.array(dtype=wp.transform), body_qd: wp.array(dtype=wp.spatial_vector),
                  pusher_body: wp.array(dtype=wp.int32), velocity: wp.array(dtype=wp.vec3), dt: float):
    """Prescribe each kinematic pusher's motion for one substep (XPBD carries kinematic state through)."""
    i = wp.tid()
    b = pusher_body[i]
    v = velocity[i]
    q = body_q[b]
    body_q[b] = wp.transform(wp.transform_get_translation(q) + v * dt, wp.transform_get_rotation(q))
    body_qd[b] = wp.spatial_vector(v, wp.vec3(0.0, 0.0, 0.0))


@dataclass(frozen=True)
class Initial:
    """An episode's start, drawn from its seed alone."""

    pusher: np.ndarray  # (2,)
    box: np.ndarray  # (2,)
    box_yaw: float
    goal: np.ndarray  # (2,)


def initial_from_seed(seed: int) -> Initial:
    """Box, goal and pusher starts for ``seed``: box and goal at least 10 cm apart, pusher clear of the box."""
    rng = np.random.default_rng(seed)
    lim = WORKSPACE - 0.08
    box = rng.uniform(-lim, lim, 2)
    goal = rng.uniform(-lim, lim, 2)
    while np.linalg.norm(goal - box) < 0.10:
        goal = rng.uniform(-lim, lim, 2)
    pusher = rng.uniform(-lim, lim, 2)
    while np.abs(pusher - box).max() < BOX_HALF + PUSHER_RADIUS + 0.02:
        pusher = rng.uniform(-lim, lim, 2)
    return Initial(pusher=pusher, box=box, box_yaw=float(rng.uniform(-np.pi / 4, np.pi / 4)), goal=goal)


def _yaw_quat(yaw: float) -> np.ndarray:
    """Warp's quaternion layout (x, y, z, w) for a rotation about +z."""
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


class NewtonPushEnv:
    """N planar push environments stepped together: ``reset(seeds)`` then ``step(actions)`` on (N, ...) arrays.

    Every environment is reset from its own seed; ``reset(seeds, mask)`` resets only the masked ones (the others
    keep running), which is how the evaluator refills finished slots.
    """

    def __init__(self, num_envs: int, device: str | None = None, max_steps: int = MAX_STEPS):
        self.num_envs = int(num_envs)
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.max_steps = int(max_steps)
        self.device = wp.get_device(device)
        self.dt = 1.0 / FPS
        self.sim_dt = self.dt / SUBSTEPS

        world = newton.ModelBuilder()
        world.default_shape_cfg.mu = 0.5
        pusher = world.add_body(xform=wp.transform(p=wp.vec3(0.0, 0.0, BOX_HALF)), mass=0.0, is_kinematic=True,
                                label="pusher")
        world.add_shape_sphere(pusher, radius=PUSHER_RADIUS)
        box = world.add_body(xform=wp.transform(p=wp.vec3(0.3, 0.0, BOX_HALF)), label="box")
        world.add_shape_box(box, hx=BOX_HALF, hy=BOX_HALF, hz=BOX_HALF,
                            cfg=newton.ModelBuilder.ShapeConfig(density=400.0, mu=0.5))
        bodies_per_world = world.body_count

        scene = newton.ModelBuilder()
        scene.default_shape_cfg.mu = 0.5
        scene.replicate(world, copy_count=self.num_envs)
        scene.add_ground_plane()
        with wp.ScopedDevice(self.device):
            self.model = scene.finalize()
            self.solver = newton.solvers.SolverXPBD(self.model, iterations=4)
            self.state_0 = self.model.state()
            self.state_1 = self.model.state()
            self.control = self.model.control()
            self.collision = newton.CollisionPipeline(self.model)
            self.contacts = self.collision.contacts()
        offsets = np.arange(self.num_envs) * bodies_per_world
        self.pusher_ids = offsets + pusher
        self.box_ids = offsets + box
        self._pusher_ids_wp = wp.array(self.pusher_ids.astype(np.int32), dtype=wp.int32, device=self.device)
        self._velocity = wp.zeros(self.num_envs, dtype=wp.vec3, device=self.device)
        self.goal = np.zeros((self.num_envs, 2))
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.seeds = np.full(self.num_envs, -1, dtype=np.int64)

    # --- state io -------------------------------------------------------------------------------------------
    def _body_q(self) -> np.ndarray:
        return self.state_0.body_q.numpy().copy()

    def observation(self) -> dict[str, np.ndarray]:
        q = self._body_q()
        pusher = q[self.pusher_ids, :2]
        box = q[self.box_ids]
        # yaw from the quaternion (x, y, z, w); the box stays upright, so this is its heading in the plane
        x, y, z, w = box[:, 3], box[:, 4], box[:, 5], box[:, 6]
        yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        env_state = np.column_stack([box[:, 0], box[:, 1], np.cos(yaw), np.sin(yaw), self.goal])
        return {"observation.state": pusher.astype(np.float32),
                "observation.environment_state": env_state.astype(np.float32)}

    def box_distance(self) -> np.ndarray:
        return np.linalg.norm(self._body_q()[self.box_ids, :2] - self.goal, axis=1)

    def reset(self, seeds, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Reset the environments in ``mask`` (all by default), environment i from ``seeds[i]``."""
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if seeds.shape != (self.num_envs,):
            raise ValueError(f"reset needs one seed per environment: {self.num_envs}, got {seeds.shape[0]}")
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        q = self._body_q()
        qd = self.state_0.body_qd.numpy().copy()
        for i in np.flatnonzero(mask):
            init = initial_from_seed(int(seeds[i]))
            q[self.pusher_ids[i]] = [*init.pusher, BOX_HALF, 0.0, 0.0, 0.0, 1.0]
            q[self.box_ids[i]] = [*init.box, BOX_HALF, *_yaw_quat(init.box_yaw)]
            qd[self.pusher_ids[i]] = 0.0
            qd[self.box_ids[i]] = 0.0
            self.goal[i] = init.goal
            self.steps[i] = 0
            self.seeds[i] = seeds[i]
        for state in (self.state_0, self.state_1):
            state.body_q.assign(q)
            state.body_qd.assign(qd)
        return self.observation()

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Drive each pusher toward its target for one control step; returns (obs, reward, success, done).

        reward is the negative box-to-goal distance; done is success or the step limit.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(f"actions must have shape ({self.num_envs}, {ACTION_DIM}), got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        target = np.clip(actions, -WORKSPACE, WORKSPACE)
        pusher = self._body_q()[self.pusher_ids, :2]
        delta = target - pusher
        dist = np.linalg.norm(delta, axis=1, keepdims=True)
        speed = np.minimum(dist / self.dt, MAX_SPEED)
        velocity = np.where(dist > 1e-9, delta / np.maximum(dist, 1e-9) * speed, 0.0)
        self._velocity.assign(np.column_stack([velocity, np.zeros(self.num_envs)]).astype(np.float32))
        for _ in range(SUBSTEPS):
            self.state_0.clear_forces()
            wp.launch(_move_pushers, dim=self.num_envs,
                      inputs=[self.state_0.body_q, self.state_0.body_qd, self._pusher_ids_wp, self._velocity,
                              self.sim_dt], device=self.device)
            self.collision.collide(self.state_0, self.contacts)
            self.solver.step(self.state_0, self.state_1, self.control, self.contacts, self.sim_dt)
            self.state_0, self.state_1 = self.state_1, self.state_0
        self.steps += 1
        obs = self.observation()
        box_dist = np.linalg.norm(obs["observation.environment_state"][:, :2] - self.goal, axis=1)
        success = box_dist < SUCCESS_RADIUS
        done = success | (self.steps >= self.max_steps)
        return obs, -box_dist, success, done


def evaluate_policy(policy: Any, n_episodes: int = 1024, n_envs: int = 1024, seed: int = 1_000_000,
                    max_steps: int = MAX_STEPS, device: str | None = None,
                    env: NewtonPushEnv | None = None) -> dict[str, Any]:
    """Success rate (Wilson 95 % interval) of ``policy`` over ``n_episodes`` push episodes, ``n_envs`` at once.

    ``policy`` is anything with ``reset()`` and a batched ``select_action({key: (n, d)}) -> (n, 2)``. Every
    environment of a batch plays exactly one episode and all start together, so the policy's batched observation
    history and action queue stay aligned; episode k is seeded ``seed + k``. A finished environment keeps
    stepping (its outcome is already counted) until the whole batch is done.
    """
    from robopolicy.sim.evaluate import wilson_interval

    n_envs = max(1, min(n_envs, n_episodes))
    env = env or NewtonPushEnv(n_envs, device=device, max_steps=max_steps)
    if env.num_envs != n_envs:
        raise ValueError(f"env has {env.num_envs} environments, the evaluation asks for {n_envs}")
    successes: list[bool] = []
    lengths: list[int] = []
    final_distance: list[float] = []
    start = seed
    while len(successes) < n_episodes:
        n = min(n_envs, n_episodes - len(successes))
        seeds = start + np.arange(n_envs)  # slots past n run too (a full batch), and are not counted
        obs = env.reset(seeds)
        policy.reset()
        done_at = np.full(n_envs, -1)
        succeeded = np.zeros(n_envs, dtype=bool)
        for t in range(max_steps):
            action = np.asarray(policy.select_action(obs), dtype=np.float32).reshape(n_envs, ACTION_DIM)
            obs, _, success, done = env.step(action)
            fresh = done & (done_at < 0)
            done_at[fresh] = t + 1
            succeeded |= success & fresh
            if (done_at[:n] >= 0).all():
                break
        distance = np.linalg.norm(obs["observation.environment_state"][:, :2] - env.goal, axis=1)
        successes.extend(bool(s) for s in succeeded[:n])
        lengths.extend(int(x) if x > 0 else max_steps for x in done_at[:n])
        final_distance.extend(float(d) for d in distance[:n])
        start += n
    k, n_total = sum(successes), len(successes)
    return {"n_episodes": n_total, "successes": k, "success_rate": k / n_total,
            "success_ci95": wilson_interval(k, n_total), "mean_length": float(np.mean(lengths)),
            "mean_final_distance_m": float(np.mean(final_distance)), "seeds": [seed, seed + n_total - 1],
            "n_envs": n_envs, "max_steps": max_steps}


__all__ = ["BOX_HALF", "FEATURES", "FPS", "MAX_SPEED", "MAX_STEPS", "PUSHER_RADIUS", "NewtonPushEnv", "evaluate_policy", "initial_from_seed"]
