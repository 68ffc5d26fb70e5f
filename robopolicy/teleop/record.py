"""The recording loop: any teleop device, any arm env with the small interface below, one recorder.

The env provides ``reset(seed=None) -> (obs, info)``, ``step(action) -> (obs, reward, terminated,
truncated, info)`` with ``info["is_success"]``, ``ee_pose() -> ArmPose`` and
``teleop_action(command) -> action`` (:class:`robopolicy.sim.robosuite_env.RobosuiteArmEnv` does).
Observations are dicts keyed by the dataset's feature names; each recorded frame is the observation
*before* the action, plus the action.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from robopolicy.data.recorder import DatasetRecorder
from robopolicy.teleop.base import TeleopDevice


@dataclasses.dataclass
class RecordingSummary:
    saved: list[int] = dataclasses.field(default_factory=list)  # episode indices written
    discarded: int = 0
    successes: int = 0
    attempts: int = 0
    quit: bool = False


def record_teleop(env: Any, device: TeleopDevice, recorder: DatasetRecorder, task: str, num_episodes: int,
                  max_steps: int = 400, save_on_success: bool = True, success_hold_steps: int = 10,
                  keep_failures: bool = False, realtime: bool = False, fps: float | None = None,
                  seed: int | None = None, action_key: str = "action", on_step=None) -> RecordingSummary:
    """Record ``num_episodes`` episodes (or until the operator quits) and return a summary.

    An episode ends when the operator saves (event ``save``) or discards it, after
    ``success_hold_steps`` steps of ``info["is_success"]`` when ``save_on_success``, or at ``max_steps``
    (saved only with ``keep_failures``). ``realtime`` paces the loop at ``fps`` (default: the recorder's).
    Attempt k is reset with seed ``s + k``, where ``s`` is ``recorder.resume_seed(seed)``: ``seed`` for a new
    dataset, the seed after the last saved episode's for a resumed one; each saved episode's seed is committed
    with it.
    """
    summary = RecordingSummary()
    period = 1.0 / float(fps or recorder.fps)
    obs_keys = [k for k in recorder.user_features if k != action_key]
    # A resumed dataset continues its seed sequence: starting again at ``seed`` would replay episodes 0, 1, ...
    next_seed = recorder.resume_seed(seed)
    while len(summary.saved) < num_episodes:
        episode_seed = next_seed
        obs, info = env.reset(seed=episode_seed)
        next_seed = None if next_seed is None else next_seed + 1
        summary.attempts += 1
        success_run = 0
        outcome = None
        next_t = time.monotonic()
        for step in range(max_steps):
            cmd = device.read(env.ee_pose())
            if "quit" in cmd.events:
                outcome = "quit"
                break
            if "discard" in cmd.events:
                outcome = "discard"
                break
            if "save" in cmd.events and recorder.episode_frames:
                outcome = "save"
                break
            action = np.asarray(env.teleop_action(cmd), dtype=np.float32)
            recorder.add_frame({**{k: obs[k] for k in obs_keys}, action_key: action})
            obs, _, terminated, truncated, info = env.step(action)
            if on_step is not None:
                on_step(step, obs, info)
            success_run = success_run + 1 if info.get("is_success") else 0
            if save_on_success and success_run >= success_hold_steps:
                outcome = "save"
                break
            if terminated or truncated:
                break
            if realtime:
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_t = time.monotonic()
        if info.get("is_success"):
            summary.successes += 1
        if outcome is None:
            outcome = "save" if keep_failures or info.get("is_success") else "discard"
        if outcome == "save" and recorder.episode_frames:
            summary.saved.append(recorder.save_episode(task=task, seed=episode_seed))
        else:
            recorder.discard_episode()
            if outcome != "quit":
                summary.discarded += 1
        if outcome == "quit":
            summary.quit = True
            break
    return summary


__all__ = ["RecordingSummary", "record_teleop"]
