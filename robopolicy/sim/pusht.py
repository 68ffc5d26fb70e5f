"""PushT (gym-pusht) with observations keyed by the dataset's feature names.

Training data and evaluation must see the same numbers, so both go through one function,
:func:`observe`, which reads gym-pusht's own simulator objects: the agent body, the block's
keypoints from ``PushTEnv.get_keypoints`` and the observation image from ``PushTEnv._render``.

Feature names (LeRobot convention):

- ``observation.state``: agent position (x, y), float32 (2,)
- ``observation.environment_state``: the T block's 8 keypoints, ``get_keypoints(...).flatten()``, float32 (16,)
- ``observation.image``: RGB uint8 (H, W, 3), gym-pusht's observation image (96 x 96 by default)
- ``action``: target agent position (x, y) in pixels, float32 (2,)

Success: the project counts an episode as solved when the block covers at least 95% of the goal
(``coverage >= 0.95``). gym-pusht itself terminates on ``coverage > 0.95``; the wrapper here
overrides ``terminated`` and ``info["is_success"]`` to use ``>=`` so the env, the dataset importer and
the evaluator agree. (Coverage is a ratio of polygon areas, so the two only differ on a tie.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # gym-pusht imports pygame, which greets on stdout
from gym_pusht.envs import PushTEnv  # noqa: E402

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
IMAGE_KEY = "observation.image"
ACTION_KEY = "action"

OBS_MODES = ("state", "image", "all")
SUCCESS_COVERAGE = 0.95
MAX_EPISODE_STEPS = 300
PUSHT_FPS = 10  # gym-pusht's control rate; demonstrations were recorded at the same rate


def _mode_keys(obs_mode: str) -> tuple[str, ...]:
    if obs_mode == "state":
        return (STATE_KEY, ENV_STATE_KEY)
    if obs_mode == "image":
        return (STATE_KEY, IMAGE_KEY)
    if obs_mode == "all":
        return (STATE_KEY, ENV_STATE_KEY, IMAGE_KEY)
    raise ValueError(f"unknown obs_mode {obs_mode!r}; expected one of {OBS_MODES}")


def pusht_obs_mode_for(input_keys: Iterable[str]) -> str:
    """The smallest ``obs_mode`` that provides every key a policy reads (e.g. its input features)."""
    keys = set(input_keys)
    unknown = keys - {STATE_KEY, ENV_STATE_KEY, IMAGE_KEY}
    if unknown:
        raise ValueError(
            f"PushT cannot provide observation keys {sorted(unknown)}; it has {STATE_KEY}, {ENV_STATE_KEY}, {IMAGE_KEY}"
        )
    if IMAGE_KEY in keys:
        return "all" if ENV_STATE_KEY in keys else "image"
    return "state"


def set_pusht_state(env: PushTEnv, state: np.ndarray | Iterable[float]) -> None:
    """Place agent and block exactly at a recorded ``[agent_x, agent_y, block_x, block_y, block_angle]``.

    A recorded state is what gym-pusht (and Diffusion Policy) *report*: ``block.position`` is the
    body origin, not its centre of gravity (which sits 45 px along the T's stem). pymunk rotates a
    body about its centre of gravity, so the angle must be set *before* the position; gym-pusht's
    legacy ``_set_state`` does the opposite and moves the origin by up to 90 px away from the
    recorded one (its own docstring warns the state set is not the one passed). Checked on
    Diffusion Policy's PushT data: angle-first reproduces the recorded images to a mean absolute
    difference of ~0.1/255 and replays the recorded trajectories exactly; position-first is off by ~3/255.

    No physics step is taken (``_set_state`` takes one of 10 ms): the recorded state already *is*
    the post-step state the environment observed, and stepping would let the agent push the block
    when they touch, so the features would describe a different state than the recorded one.
    Both bodies are left at rest. Shapes are re-indexed so rendering and collision queries see the
    new pose (pymunk otherwise refreshes the cached world-space vertices only inside ``space.step``).
    """
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    if s.shape != (5,) or not np.all(np.isfinite(s)):
        raise ValueError(f"PushT state must be 5 finite numbers [agent_x, agent_y, block_x, block_y, block_angle], got {s}")
    env.agent.position = (s[0], s[1])
    env.agent.velocity = (0.0, 0.0)
    env.block.angle = s[4]
    env.block.position = (s[2], s[3])
    env.block.velocity = (0.0, 0.0)
    env.block.angular_velocity = 0.0
    env.space.reindex_shapes_for_body(env.agent)
    env.space.reindex_shapes_for_body(env.block)


def observe(env: PushTEnv, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The requested observation features of the env's current simulator state."""
    obs: dict[str, np.ndarray] = {}
    for key in keys:
        if key == STATE_KEY:
            obs[key] = np.asarray(env.agent.position, dtype=np.float32)
        elif key == ENV_STATE_KEY:
            obs[key] = env.get_keypoints(env._block_shapes).flatten().astype(np.float32)
        elif key == IMAGE_KEY:
            obs[key] = env._render(visualize=False)  # exactly gym-pusht's `pixels` observation
        else:
            raise KeyError(f"unknown PushT observation key {key!r}")
    return obs


class PushTFeatureObservation(gym.Wrapper):
    """gym-pusht with dict observations named like dataset features and ``info["coverage"]``.

    ``reset(options={"reset_to_state": s})`` places the bodies exactly at ``s`` (see
    :func:`set_pusht_state`), unlike gym-pusht's legacy handling of the same option, so a recorded
    dataset state can be reproduced.
    """

    def __init__(self, env: gym.Env, obs_mode: str = "state", success_threshold: float = SUCCESS_COVERAGE):
        super().__init__(env)
        if not isinstance(env.unwrapped, PushTEnv):
            raise TypeError(f"expected a gym-pusht PushTEnv underneath, got {type(env.unwrapped).__name__}")
        self.keys = _mode_keys(obs_mode)
        self.obs_mode = obs_mode
        self.success_threshold = success_threshold
        pusht: PushTEnv = env.unwrapped
        size = (pusht.observation_height, pusht.observation_width, 3)
        all_spaces = {
            STATE_KEY: spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32),
            ENV_STATE_KEY: spaces.Box(0.0, 512.0, shape=(16,), dtype=np.float32),
            IMAGE_KEY: spaces.Box(0, 255, shape=size, dtype=np.uint8),
        }
        self.observation_space = spaces.Dict({k: all_spaces[k] for k in self.keys})

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        state = options.pop("reset_to_state", None)
        _, info = self.env.reset(seed=seed, options=options or None)
        pusht: PushTEnv = self.env.unwrapped
        if state is not None:
            # gym-pusht's reset already stepped physics on a random start; if its bodies overlapped,
            # pymunk keeps that contact cached and it would still shove the block on our first step.
            pusht._setup()
            set_pusht_state(pusht, state)
            info.update(pusht._get_info())
        coverage = float(pusht._get_coverage())
        info["coverage"] = coverage
        info["is_success"] = coverage >= self.success_threshold
        return observe(pusht, self.keys), info

    def step(self, action):
        _, reward, _, truncated, info = self.env.step(action)
        coverage = float(info["coverage"])
        success = coverage >= self.success_threshold
        info["coverage"] = coverage
        info["is_success"] = success
        return observe(self.env.unwrapped, self.keys), reward, success, truncated, info


def make_pusht_env(
    obs_mode: str = "state",
    render_size: int = 96,
    video_size: int = 384,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    success_threshold: float = SUCCESS_COVERAGE,
) -> gym.Env:
    """PushT env whose observations are ``{feature name: array}`` (see module docstring).

    ``obs_mode``: "state" (agent pos + keypoints), "image" (agent pos + image) or "all".
    ``render_size`` is the observation image side; ``video_size`` the side of ``env.render()`` frames
    (gym-pusht's visualization, with the commanded target drawn as a red cross).
    An episode is truncated after ``max_episode_steps`` and terminates on success.
    """
    _mode_keys(obs_mode)  # fail before building anything
    base = PushTEnv(
        obs_type="state",  # cheapest inner observation; the wrapper builds the real one
        render_mode="rgb_array",
        observation_width=render_size,
        observation_height=render_size,
        visualization_width=video_size,
        visualization_height=video_size,
    )
    env = gym.wrappers.TimeLimit(base, max_episode_steps=max_episode_steps)
    return PushTFeatureObservation(env, obs_mode=obs_mode, success_threshold=success_threshold)


def pusht_features_from_states(
    states: np.ndarray, render_images: bool = True, image_size: int = 96
) -> dict[str, np.ndarray]:
    """Observation features and coverage for recorded PushT states, computed by the env itself.

    ``states`` is (N, 5) ``[agent_x, agent_y, block_x, block_y, block_angle]`` as Diffusion Policy
    records it (block position = body origin). Each state is placed on one gym-pusht instance with
    :func:`set_pusht_state` (no physics step; see there why) and read back through :func:`observe`
    and ``PushTEnv._get_coverage``, the same code the evaluation env runs.

    Returns ``observation.state`` (N, 2) float32, ``observation.environment_state`` (N, 16) float32,
    ``coverage`` (N,) float64 and, if ``render_images``, ``observation.image`` (N, S, S, 3) uint8.
    Rendering costs ~1.5 ms per state on one CPU core; without images ~0.1 ms.
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != 5:
        raise ValueError(
            f"states must have shape (N, 5) = [agent_x, agent_y, block_x, block_y, block_angle], got {states.shape}"
        )
    if not np.all(np.isfinite(states)):
        bad = np.flatnonzero(~np.all(np.isfinite(states), axis=1))
        raise ValueError(f"states contain non-finite values in rows {bad[:10].tolist()}")

    env = PushTEnv(obs_type="state", render_mode="rgb_array", observation_width=image_size, observation_height=image_size)
    env.reset(seed=0)  # builds the pymunk space; the sampled start state is overwritten below
    keys = (STATE_KEY, ENV_STATE_KEY, IMAGE_KEY) if render_images else (STATE_KEY, ENV_STATE_KEY)
    n = len(states)
    out: dict[str, np.ndarray] = {
        STATE_KEY: np.empty((n, 2), dtype=np.float32),
        ENV_STATE_KEY: np.empty((n, 16), dtype=np.float32),
        "coverage": np.empty(n, dtype=np.float64),
    }
    if render_images:
        out[IMAGE_KEY] = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for i, state in enumerate(states):
        set_pusht_state(env, state)
        for key, value in observe(env, keys).items():
            out[key][i] = value
        out["coverage"][i] = env._get_coverage()
    env.close()
    return out


__all__ = [
    "ACTION_KEY",
    "ENV_STATE_KEY",
    "IMAGE_KEY",
    "MAX_EPISODE_STEPS",
    "OBS_MODES",
    "PUSHT_FPS",
    "STATE_KEY",
    "SUCCESS_COVERAGE",
    "PushTFeatureObservation",
    "make_pusht_env",
    "observe",
    "pusht_features_from_states",
    "pusht_obs_mode_for",
    "set_pusht_state",
]
