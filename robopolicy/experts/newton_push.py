"""The scripted expert of the Newton push task, and demonstrations recorded from the vectorized env.

The expert is a function of the observation alone (no memory), so every environment of the batch runs it at
once and a finished environment is reset from its next seed while the others keep pushing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data.recorder import DatasetRecorder
from robopolicy.sim.newton_env import (
    BOX_HALF,
    FEATURES,
    FPS,
    MAX_SPEED,
    MAX_STEPS,
    PUSHER_RADIUS,
    NewtonPushEnv,
)

TASK = "push the cube to the goal"


def expert_action(obs: dict[str, np.ndarray], standoff: float = BOX_HALF + PUSHER_RADIUS + 0.015) -> np.ndarray:
    """A scripted pusher: go around to the box's far side from the goal, then push it along the goal line.

    Vectorized over environments. The box is treated as a disk (its yaw is ignored): pushing through the
    centre keeps it moving roughly straight, and the pusher re-aligns whenever the box drifts off the line.
    """
    pusher = obs["observation.state"].astype(np.float64)
    env = obs["observation.environment_state"].astype(np.float64)
    box, goal = env[:, :2], env[:, 4:6]
    to_goal = goal - box
    u = to_goal / np.maximum(np.linalg.norm(to_goal, axis=1, keepdims=True), 1e-9)
    behind = box - u * standoff
    rel = pusher - box
    along = np.sum(rel * u, axis=1)  # < 0: behind the box
    lateral = rel - along[:, None] * u
    lateral_dist = np.linalg.norm(lateral, axis=1)
    aligned = (along < -0.5 * standoff) & (lateral_dist < 0.02)
    # push: aim through the box toward the goal (the speed limit makes this a steady push)
    push_target = box + u * 0.05
    # reposition: go to the pre-push point; when that path would cross the box, detour sideways first
    side = np.where(lateral_dist[:, None] > 1e-6, lateral / np.maximum(lateral_dist[:, None], 1e-9),
                    np.column_stack([-u[:, 1], u[:, 0]]))
    clear = standoff + 0.02
    detour = box + side * clear - u * 0.5 * clear
    needs_detour = (along > -0.5 * standoff) & (lateral_dist < clear)
    reposition = np.where(needs_detour[:, None], detour, behind)
    target = np.where(aligned[:, None], push_target, reposition)
    # one control step's reach: the label is where the pusher goes next, so a chunk of labels is a smooth path
    # (a far waypoint that jumps when the expert switches phase is much harder to regress)
    step = target - pusher
    reach = MAX_SPEED / FPS
    norm = np.linalg.norm(step, axis=1, keepdims=True)
    step = np.where(norm > reach, step / np.maximum(norm, 1e-9) * reach, step)
    return (pusher + step).astype(np.float32)


def record_demonstrations(root: str | Path, n_episodes: int = 300, n_envs: int = 64, seed: int = 0,
                          action_noise: float = 0.01, only_successful: bool = True, overwrite: bool = False,
                          max_steps: int = MAX_STEPS, device: str | None = None) -> dict[str, Any]:
    """Run the expert on ``n_envs`` environments at once until ``n_episodes`` have ended; record them.

    Episode k is seeded ``seed + k``. Labels are the expert's clean actions; the executed ones carry Gaussian
    noise of std ``action_noise`` metres (DART), so the demonstrations show recoveries from small errors. With
    ``only_successful`` failed episodes are dropped (and counted). Episodes are saved in the order they end.
    """
    n_envs = max(1, min(n_envs, n_episodes))
    env = NewtonPushEnv(n_envs, device=device, max_steps=max_steps)
    rng = np.random.default_rng(seed + 1_000_003)
    seeds = seed + np.arange(n_envs)
    next_seed = seed + n_envs
    obs = env.reset(seeds)
    buffers: list[list[dict[str, np.ndarray]]] = [[] for _ in range(n_envs)]
    active = np.ones(n_envs, dtype=bool)
    ended = kept = successes = 0
    lengths: list[int] = []
    with DatasetRecorder(root, fps=FPS, features=FEATURES, robot_type="newton_pusher", overwrite=overwrite,
                         resume=False) as recorder:
        while active.any():
            label = expert_action(obs)
            executed = label + rng.normal(0.0, action_noise, label.shape) if action_noise else label
            for i in np.flatnonzero(active):
                buffers[i].append({"observation.state": obs["observation.state"][i],
                                   "observation.environment_state": obs["observation.environment_state"][i],
                                   "action": label[i]})
            obs, _, success, done = env.step(executed)
            finished = np.flatnonzero(done & active)
            for i in finished:
                ended += 1
                successes += bool(success[i])
                if success[i] or not only_successful:
                    for frame in buffers[i]:
                        recorder.add_frame({**frame, "task": TASK})
                    recorder.save_episode(task=TASK, seed=int(env.seeds[i]))
                    kept += 1
                    lengths.append(len(buffers[i]))
                buffers[i] = []
            if len(finished):
                restart = np.zeros(n_envs, dtype=bool)
                for i in finished:
                    if next_seed < seed + n_episodes:
                        seeds[i] = next_seed
                        next_seed += 1
                        restart[i] = True
                    else:
                        active[i] = False
                if restart.any():
                    obs = env.reset(seeds, mask=restart)
    return {"root": str(root), "episodes_run": ended, "episodes_kept": kept, "expert_success_rate": successes / ended,
            "mean_length": float(np.mean(lengths)) if lengths else 0.0, "action_noise": action_noise,
            "seeds": [seed, seed + n_episodes - 1]}


__all__ = ["TASK", "expert_action", "record_demonstrations"]
