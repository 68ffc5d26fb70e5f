"""Import Diffusion Policy's zarr ``ReplayBuffer`` (PushT human demos) into LeRobotDataset v3.0.

The zarr holds the simulator state per step; the observations a policy trains on are recomputed
from that state with the evaluation environment's own functions
(:func:`robopolicy.sim.pusht.pusht_features_from_states`), so training and evaluation see exactly
the same numbers. Diffusion Policy's own 9-keypoint array differs from gym-pusht's 8 keypoints and
is deliberately not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from robopolicy.data.format import DatasetError
from robopolicy.data.writer import LeRobotDatasetWriter

PUSHT_TASK = "Push the T-shaped block onto the T-shaped target."
PUSHT_FPS = 10
SUCCESS_COVERAGE = 0.95
# gym-pusht's goal is the T at (256, 256) turned by pi/4; the T is symmetric about its body's y axis, which
# then lies on the arena's diagonal x + y = 512. Reflecting across that line maps the arena (walls at 5 and
# 506, so to within a pixel), the goal and the physics onto themselves.
PUSHT_MIRROR_SUM = 512.0


def mirror_pusht(states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mirror image of a PushT episode across the goal T's symmetry axis (x + y = 512).

    A point (x, y) goes to (512 - y, 512 - x); the block's angle θ to π/2 - θ (its symmetry axis,
    direction (-sin θ, cos θ), is reflected onto (-cos θ, sin θ)), wrapped to [0, 2π). The result is
    another valid demonstration of the same task with the same coverage at every step.
    """
    states = np.asarray(states, dtype=np.float64)
    actions = np.asarray(actions)
    mirrored = np.empty_like(states)
    mirrored[:, 0], mirrored[:, 1] = PUSHT_MIRROR_SUM - states[:, 1], PUSHT_MIRROR_SUM - states[:, 0]
    mirrored[:, 2], mirrored[:, 3] = PUSHT_MIRROR_SUM - states[:, 3], PUSHT_MIRROR_SUM - states[:, 2]
    mirrored[:, 4] = np.mod(np.pi / 2 - states[:, 4], 2 * np.pi)
    return mirrored, (PUSHT_MIRROR_SUM - actions[:, ::-1]).astype(actions.dtype)


def read_replay_buffer(path: str | Path, keys: tuple[str, ...]) -> tuple[dict[str, Any], np.ndarray]:
    """Lazy zarr arrays ``data/<key>`` and validated ``meta/episode_ends``."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: zarr replay buffer does not exist")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as e:  # zarr raises several unrelated types for a non-group path
        raise DatasetError(f"{path}: not a zarr group ({e})") from e
    try:
        ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
    except KeyError as e:
        raise DatasetError(f"{path}: array 'meta/episode_ends' is missing") from e
    arrays = {}
    for key in keys:
        try:
            arrays[key] = root[f"data/{key}"]
        except KeyError as e:
            raise DatasetError(f"{path}: array 'data/{key}' is missing") from e
    n = ends[-1] if len(ends) else 0
    if len(ends) == 0 or np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise DatasetError(f"{path}: meta/episode_ends must be strictly increasing positive ends, got {ends[:5]}...")
    for key, arr in arrays.items():
        if arr.shape[0] != n:
            raise DatasetError(f"{path}: data/{key} has {arr.shape[0]} rows, meta/episode_ends says {n}")
    return arrays, ends


def pusht_features(with_images: bool) -> dict[str, dict[str, Any]]:
    features: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["x", "y"]}},
        "observation.environment_state": {
            "dtype": "float32",
            "shape": [16],
            "names": [f"keypoint_{i}_{axis}" for i in range(8) for axis in "xy"],
        },
        "action": {"dtype": "float32", "shape": [2], "names": {"motors": ["x", "y"]}},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    if with_images:
        features["observation.image"] = {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channels"]}
    return features


def convert_pusht_zarr(
    zarr_path: str | Path,
    output: str | Path,
    max_episodes: int | None = None,
    with_images: bool = True,
    overwrite: bool = False,
    video_codec: str = "libx264",
    video_crf: int = 18,
    progress: bool = True,
    mirror: bool = False,
) -> Path:
    """Write the PushT replay buffer as a LeRobot v3.0 dataset at ``output`` and return its path.

    ``mirror``: after each episode also write its :func:`mirror_pusht` image, so the dataset holds
    twice the episodes (observations recomputed by the env from the mirrored states, as for the originals).
    """
    from robopolicy.sim.pusht import pusht_features_from_states

    arrays, ends = read_replay_buffer(zarr_path, ("state", "action"))
    starts = np.concatenate([[0], ends[:-1]])
    n_episodes = len(ends) if max_episodes is None else min(max_episodes, len(ends))
    for key, width in (("state", 5), ("action", 2)):
        if tuple(arrays[key].shape[1:]) != (width,):
            raise DatasetError(f"{zarr_path}: data/{key} has shape {arrays[key].shape}, expected (N, {width})")
    states_all = np.asarray(arrays["state"][: ends[n_episodes - 1]], dtype=np.float64)
    actions_all = np.asarray(arrays["action"][: ends[n_episodes - 1]], dtype=np.float32)

    with LeRobotDatasetWriter(output, fps=PUSHT_FPS, features=pusht_features(with_images), robot_type="pusht",
                              video_codec=video_codec, video_crf=video_crf, overwrite=overwrite) as writer, \
            Progress(disable=not progress) as bar:
        task = bar.add_task("converting PushT episodes", total=n_episodes * (2 if mirror else 1))
        episodes = [(states_all[s:t], actions_all[s:t]) for s, t in zip(starts[:n_episodes], ends[:n_episodes])]
        if mirror:
            episodes = [pair for episode in episodes for pair in (episode, mirror_pusht(*episode))]
        for states, actions in episodes:
            length = len(states)
            obs = pusht_features_from_states(states, render_images=with_images)
            # The reward of step i is earned by the state it leads to (the next recorded state);
            # the final step has no successor and keeps its own state's coverage.
            next_coverage = np.concatenate([obs["coverage"][1:], obs["coverage"][-1:]])
            episode = {
                "observation.state": obs["observation.state"],
                "observation.environment_state": obs["observation.environment_state"],
                "action": actions,
                "next.reward": np.clip(next_coverage / SUCCESS_COVERAGE, 0.0, 1.0).astype(np.float32),
                "next.success": next_coverage >= SUCCESS_COVERAGE,
                "next.done": np.arange(length) == (length - 1),
            }
            if with_images:
                episode["observation.image"] = obs["observation.image"]
            writer.add_episode(episode, PUSHT_TASK)
            bar.advance(task)
    return Path(output)
