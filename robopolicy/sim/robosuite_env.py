"""robosuite arm tasks (Panda Lift, PickPlaceCan, Stack) as gymnasium envs keyed by dataset feature names.

Features (the same numbers robomimic's low-dim datasets use, so imported robomimic demos and these
envs agree; see :mod:`robopolicy.importers.robomimic_hdf5`):

- ``observation.state`` (9,): ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, x y z w), ``robot0_gripper_qpos`` (2)
- ``observation.environment_state``: robosuite's ``object-state`` (Lift: cube pos, quat, gripper-to-cube; 10)
- ``observation.images.<camera>``: RGB uint8 (H, W, 3), upright, when ``cameras`` are given (offscreen
  rendering: ``MUJOCO_GL=egl`` with a GPU/EGL, else ``MUJOCO_GL=osmesa``)
- ``action`` (7,): robosuite's OSC_POSE delta action, normalized to [-1, 1]: [dx, dy, dz] x 0.05 m,
  [rx, ry, rz] axis-angle x 0.5 rad, in the robot base frame, then the gripper (-1 open, +1 closed)

``info["is_success"]`` is the env's own ``_check_success()``; ``info["coverage"]`` is the same as a
float (1.0 or 0.0) so :func:`robopolicy.sim.evaluate.evaluate` (which counts ``coverage >= threshold``)
works unchanged. Episodes end by truncation at ``horizon``; robosuite never terminates.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robopolicy.teleop.base import ArmPose, TeleopCommand

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = "action"
STATE_PARTS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
TASKS = {
    "Lift": "Lift the cube.",
    "PickPlaceCan": "Pick up the can and place it in its bin.",
    "Stack": "Stack the red cube on the green cube.",
}
DEFAULT_HORIZON = {"Lift": 200, "PickPlaceCan": 400, "Stack": 400}
CONTROL_FREQ = 20
POS_SCALE = 0.05  # metres per unit action (OSC_POSE output_max)
ROT_SCALE = 0.5  # radians per unit action


def _import_robosuite():
    try:
        import robosuite
    except ImportError as e:
        raise ImportError("robosuite is not installed; see docs/arms.md (pip install -e '.[arms]' and "
                          "pip install --no-deps 'robosuite==1.5.*')") from e
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    return robosuite


def image_key(camera: str) -> str:
    return f"observation.images.{camera}"


class RobosuiteArmEnv(gym.Env):
    """A robosuite manipulation task with a Panda arm under OSC end-effector delta control."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(self, task: str = "Lift", robot: str = "Panda", horizon: int | None = None,
                 cameras: tuple[str, ...] | list[str] = (), camera_size: tuple[int, int] = (84, 84),
                 control_freq: int = CONTROL_FREQ, reward_shaping: bool = False, render_camera: str = "agentview",
                 render_size: tuple[int, int] = (256, 256), seed: int | None = None, offscreen_render: bool = False,
                 **suite_kwargs: Any):
        suite = _import_robosuite()
        from robosuite.controllers import load_composite_controller_config

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (supported: {sorted(TASKS)})")
        self.task_name, self.robot = task, robot
        self.task = TASKS[task]
        self.cameras = tuple(cameras)
        self.camera_size = tuple(camera_size)
        self.render_camera, self.render_size = render_camera, tuple(render_size)
        self.horizon = int(horizon or DEFAULT_HORIZON[task])
        self.control_freq = int(control_freq)
        self.metadata = {**self.metadata, "render_fps": self.control_freq}
        offscreen = bool(self.cameras) or offscreen_render  # render() (videos) needs the offscreen renderer too
        self._offscreen = offscreen
        if offscreen and not os.environ.get("MUJOCO_GL"):
            os.environ["MUJOCO_GL"] = "egl"
        controller = load_composite_controller_config(controller="BASIC", robot=robot)
        kwargs = dict(robots=robot, controller_configs=controller, has_renderer=False,
                      has_offscreen_renderer=offscreen, use_camera_obs=bool(self.cameras), use_object_obs=True,
                      control_freq=self.control_freq, horizon=self.horizon, ignore_done=True,
                      reward_shaping=reward_shaping, seed=seed)
        if self.cameras:
            kwargs.update(camera_names=list(self.cameras), camera_heights=self.camera_size[0],
                          camera_widths=self.camera_size[1])
        if task == "PickPlaceCan":
            task_env, kwargs["single_object_mode"], kwargs["object_type"] = "PickPlace", 2, "can"
        else:
            task_env = task
        kwargs.update(suite_kwargs)
        try:
            self._env = suite.make(task_env, **kwargs)
        except Exception as e:
            if offscreen:
                raise RuntimeError(
                    f"robosuite could not create an offscreen renderer for cameras {list(self.cameras)} or videos "
                    f"(MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {e}. Use MUJOCO_GL=egl on a machine with EGL, "
                    "MUJOCO_GL=osmesa with libosmesa6 installed, or a low-dim (cameras=()) env."
                ) from e
            raise
        import robosuite.macros as macros

        self._flip = macros.IMAGE_CONVENTION == "opengl"
        self._obs: dict[str, np.ndarray] | None = None
        self._steps = 0
        self._gripper = -1.0
        raw = self._env.reset()
        self.state_dim = sum(int(np.prod(raw[k].shape)) for k in STATE_PARTS)
        self.env_state_dim = int(np.prod(raw["object-state"].shape))
        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        obs_spaces = {
            STATE_KEY: spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32),
            ENV_STATE_KEY: spaces.Box(-np.inf, np.inf, (self.env_state_dim,), np.float32),
        }
        for cam in self.cameras:
            obs_spaces[image_key(cam)] = spaces.Box(0, 255, (*self.camera_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    # ---- dataset features ------------------------------------------------------------------------
    def features(self) -> dict[str, dict[str, Any]]:
        """The LeRobot features of what this env observes and takes, for a recorder or writer."""
        names = [f"{k}.{i}" for k, n in (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2))
                 for i in range(n)]
        feats: dict[str, dict[str, Any]] = {
            STATE_KEY: {"dtype": "float32", "shape": [self.state_dim], "names": names},
            ENV_STATE_KEY: {"dtype": "float32", "shape": [self.env_state_dim], "names": None},
        }
        for cam in self.cameras:
            feats[image_key(cam)] = {"dtype": "video", "shape": [*self.camera_size, 3],
                                     "names": ["height", "width", "channels"]}
        feats[ACTION_KEY] = {"dtype": "float32", "shape": [self.action_space.shape[0]],
                             "names": ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"][: self.action_space.shape[0]]}
        return feats

    # ---- gym API ---------------------------------------------------------------------------------
    def _observe(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._raw = raw
        obs = {
            STATE_KEY: np.concatenate([np.asarray(raw[k], dtype=np.float32).reshape(-1) for k in STATE_PARTS]),
            ENV_STATE_KEY: np.asarray(raw["object-state"], dtype=np.float32).reshape(-1),
        }
        for cam in self.cameras:
            img = np.asarray(raw[f"{cam}_image"], dtype=np.uint8)
            obs[image_key(cam)] = np.ascontiguousarray(img[::-1] if self._flip else img)
        self.last_obs = obs
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:  # robosuite's placement sampler holds env.rng: reseed it in place
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._steps = 0
        self._gripper = -1.0
        obs = self._observe(raw)
        success = bool(self._env._check_success())
        return obs, {"is_success": success, "coverage": float(success)}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if not np.isfinite(a).all():
            raise ValueError(f"non-finite action {a}")
        a = np.clip(a, self.action_space.low, self.action_space.high)
        self._gripper = float(a[-1])
        raw, reward, _, info = self._env.step(a)
        self._steps += 1
        success = bool(self._env._check_success())
        info = {**info, "is_success": success, "coverage": float(success)}
        return self._observe(raw), float(reward), False, self._steps >= self.horizon, info

    def render(self):
        if not self._offscreen:
            raise RuntimeError(f"{self.task_name}: render() needs an offscreen renderer; create the env with "
                               "offscreen_render=True (or cameras=...)")
        frame = self._env.sim.render(camera_name=self.render_camera, height=self.render_size[0],
                                     width=self.render_size[1])
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self._env.close()

    # ---- teleop / arm bridge helpers -------------------------------------------------------------
    @property
    def episode_step(self) -> int:
        """Env steps since the last reset."""
        return self._steps

    @property
    def sim(self):
        return self._env.sim

    @property
    def unwrapped_suite(self):
        return self._env

    def ee_pose(self) -> ArmPose:
        raw = self._raw
        return ArmPose(np.asarray(raw["robot0_eef_pos"], dtype=np.float64).copy(),
                       np.asarray(raw["robot0_eef_quat"], dtype=np.float64).copy(), self._gripper)

    def teleop_action(self, cmd: TeleopCommand) -> np.ndarray:
        """A device command (metres, radians) as this env's normalized OSC action."""
        gripper = self._gripper if cmd.gripper is None else float(np.sign(cmd.gripper) or -1.0)
        return np.concatenate([np.clip(cmd.delta_pos / POS_SCALE, -1, 1), np.clip(cmd.delta_rot / ROT_SCALE, -1, 1),
                               [gripper]]).astype(np.float32)

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        raw = self._raw
        return np.asarray(raw["robot0_joint_pos"], dtype=np.float64), np.asarray(raw["robot0_joint_vel"], dtype=np.float64)


def make_robosuite_env(task: str = "Lift", **kwargs: Any) -> RobosuiteArmEnv:
    return RobosuiteArmEnv(task=task, **kwargs)


def measure_steps_per_second(task: str = "Lift", steps: int = 400, **kwargs: Any) -> float:
    """Env steps per second with random actions (after one warm-up episode step)."""
    import time

    env = RobosuiteArmEnv(task=task, **kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    env.step(np.zeros(env.action_space.shape))
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, _, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if trunc:
            env.reset(seed=i)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


__all__ = ["ACTION_KEY", "ENV_STATE_KEY", "STATE_KEY", "TASKS", "RobosuiteArmEnv", "image_key", "make_robosuite_env",
           "measure_steps_per_second"]
