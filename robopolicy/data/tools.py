"""Dataset tools without LeRobot installed: info, merge, split and delete episodes.

They read any dataset the reader reads (v3.0 or v2.1, from robopolicy or LeRobot, cameras as video or
images) and write a new v3.0 dataset with the writer, so the result has fresh indices, per-episode
and global statistics, and the layout LeRobot writes. Inputs are never modified.

Camera frames are decoded and encoded again (video: one more generation of codec loss at the writer's
crf; images: PNG, lossless). LeRobot's ``aggregate_datasets`` stream-copies video files instead, which
needs every input encoded with the same settings; re-encoding works on any mix of codecs and sizes of
GOP, and is what split and delete need anyway, since an episode need not start on a keyframe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data import format as fmt
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.writer import LeRobotDatasetWriter

Selection = tuple[LeRobotDataset, Sequence[int]]  # a source dataset and which of its episodes, in order


def user_features(ds: LeRobotDataset) -> dict[str, dict[str, Any]]:
    """The features a writer is given: all but the default columns, without the codec-specific video info."""
    return {key: {k: v for k, v in ft.items() if k != "info"} for key, ft in ds.features.items()
            if key not in fmt.DEFAULT_FEATURES}


def episode_task(ds: LeRobotDataset, episode: int) -> str:
    start, stop = ds.episode_bounds[episode]
    task_indices = np.unique(ds.column("task_index")[start:stop])
    if len(task_indices) != 1:
        raise DatasetError(f"{ds.root}: episode {episode} has {len(task_indices)} tasks ({task_indices.tolist()}); "
                           "these tools copy one task per episode")
    index = int(task_indices[0])
    if index not in ds.tasks:
        raise DatasetError(f"{ds.root / fmt.TASKS_PATH}: task_index {index} of episode {episode} is not listed")
    return ds.tasks[index]


def episode_data(ds: LeRobotDataset, episode: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
    start, stop = ds.episode_bounds[episode]
    return {key: ds.camera_frames(key, episode) if key in ds.camera_keys else ds.column(key)[start:stop]
            for key in keys}


def write_episodes(selections: Sequence[Selection], output: str | Path, *, use_videos: bool | None = None,
                   overwrite: bool = False, video_codec: str = "libx264", video_crf: int = 18,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Copy the selected episodes, in order, into a new dataset at ``output``; return its path.

    All sources must agree on fps and features (dtype and shape). ``use_videos=None`` keeps the first
    source's camera storage (video or images); True/False converts every camera to video/images.
    """
    if not selections:
        raise ValueError("no source datasets given")
    first = selections[0][0]
    features = user_features(first)
    strings = [k for k, ft in features.items() if ft["dtype"] == "string"]
    if strings:
        raise DatasetError(f"{first.root}: string features {strings} are not supported by the writer")
    for ds, episodes in selections:
        _check_compatible(first, ds)
        bad = [e for e in episodes if not 0 <= e < ds.num_episodes]
        if bad:
            raise ValueError(f"{ds.root}: no episodes {bad} (it has episodes 0..{ds.num_episodes - 1})")
    if use_videos is not None:
        storage = "video" if use_videos else "image"
        features = {k: {**ft, "dtype": storage} if ft["dtype"] in fmt.VISUAL_DTYPES else ft
                    for k, ft in features.items()}
    total = sum(len(episodes) for _, episodes in selections)
    if total == 0:
        raise ValueError("the selection has no episodes: the output would be empty")
    output = Path(output)
    if any(output.resolve() == ds.root.resolve() for ds, _ in selections):
        raise ValueError(f"{output}: the output must not be one of the inputs (inputs are never modified)")
    done = 0
    with LeRobotDatasetWriter(output, fps=first.fps, features=features, robot_type=first.info.get("robot_type"),
                              video_codec=video_codec, video_crf=video_crf, overwrite=overwrite) as writer:
        for ds, episodes in selections:
            for e in episodes:
                writer.add_episode(episode_data(ds, e, list(features)), task=episode_task(ds, e))
                done += 1
                if progress is not None:
                    progress(done, total)
    return output


def _check_compatible(reference: LeRobotDataset, ds: LeRobotDataset) -> None:
    if ds.fps != reference.fps:
        raise DatasetError(f"{ds.root}: fps {ds.fps} differs from {reference.root}'s {reference.fps}")
    a, b = user_features(reference), user_features(ds)
    if set(a) != set(b):
        raise DatasetError(f"{ds.root}: features {sorted(set(b) ^ set(a))} are not in both {reference.root} and {ds.root}")
    for key in a:
        kind_a = "camera" if a[key]["dtype"] in fmt.VISUAL_DTYPES else a[key]["dtype"]
        kind_b = "camera" if b[key]["dtype"] in fmt.VISUAL_DTYPES else b[key]["dtype"]
        if kind_a != kind_b or list(a[key]["shape"]) != list(b[key]["shape"]):
            raise DatasetError(f"{ds.root}: feature {key!r} is {b[key]['dtype']} {b[key]['shape']}, "
                               f"but {a[key]['dtype']} {a[key]['shape']} in {reference.root}")


def merge(roots: Sequence[str | Path], output: str | Path, **kw: Any) -> Path:
    """All episodes of every dataset, in the order given (LeRobot's ``aggregate_datasets``)."""
    datasets = [LeRobotDataset(r) for r in roots]
    return write_episodes([(ds, range(ds.num_episodes)) for ds in datasets], output, **kw)


def delete_episodes(root: str | Path, episodes: Sequence[int], output: str | Path, **kw: Any) -> Path:
    """A copy of the dataset without ``episodes``; the rest are renumbered 0..N-1 in order."""
    ds = LeRobotDataset(root)
    drop = set(int(e) for e in episodes)
    unknown = sorted(e for e in drop if not 0 <= e < ds.num_episodes)
    if unknown:
        raise ValueError(f"{ds.root}: no episodes {unknown} to delete (it has episodes 0..{ds.num_episodes - 1})")
    return write_episodes([(ds, [e for e in range(ds.num_episodes) if e not in drop])], output, **kw)


def split_episodes(n_episodes: int, splits: dict[str, float | Sequence[int]]) -> dict[str, list[int]]:
    """Episode indices per split: fractions take consecutive episodes in order (the last split takes the
    rounding remainder when the fractions sum to 1); lists are taken as given. Splits may not overlap."""
    if not splits:
        raise ValueError("no splits given, e.g. {'train': 0.8, 'val': 0.2} or {'val': [0, 5]}")
    out: dict[str, list[int]] = {}
    fractions = {k: v for k, v in splits.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    explicit = {k: [int(e) for e in v] for k, v in splits.items() if k not in fractions}
    taken = {e for v in explicit.values() for e in v}
    free = [e for e in range(n_episodes) if e not in taken]
    if fractions:
        if any(f <= 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
            raise ValueError(f"split fractions must be positive and sum to at most 1, got {fractions}")
        start, names = 0, list(fractions)
        for i, name in enumerate(names):
            last = i == len(names) - 1 and abs(sum(fractions.values()) - 1) < 1e-9
            count = len(free) - start if last else int(round(fractions[name] * len(free)))
            out[name] = free[start:start + count]
            start += count
    for name, episodes in explicit.items():
        bad = [e for e in episodes if not 0 <= e < n_episodes]
        if bad:
            raise ValueError(f"split {name!r}: no episodes {bad} (the dataset has 0..{n_episodes - 1})")
        out[name] = episodes
    seen: dict[int, str] = {}
    for name in splits:
        for e in out[name]:
            if e in seen:
                raise ValueError(f"episode {e} is in both split {seen[e]!r} and {name!r}")
            seen[e] = name
        if not out[name]:
            raise ValueError(f"split {name!r} gets no episodes out of {n_episodes}")
    return {name: out[name] for name in splits}


def split(root: str | Path, splits: dict[str, float | Sequence[int]], output_dir: str | Path,
          **kw: Any) -> dict[str, Path]:
    """One dataset per split under ``output_dir/<name>`` (LeRobot's ``split_dataset``)."""
    ds = LeRobotDataset(root)
    plan = split_episodes(ds.num_episodes, splits)
    return {name: write_episodes([(ds, episodes)], Path(output_dir) / name, **kw) for name, episodes in plan.items()}


def info(root: str | Path) -> dict[str, Any]:
    """What a dataset holds, read and checked by the reader: episodes, frames, tasks, features, files."""
    ds = LeRobotDataset(root)
    lengths = ds.episode_bounds[:, 1] - ds.episode_bounds[:, 0]
    files = [p for p in ds.root.rglob("*") if p.is_file()]
    features = {}
    for key, ft in ds.features.items():
        entry: dict[str, Any] = {"dtype": ft["dtype"], "shape": list(ft["shape"])}
        if ft["dtype"] == "video":
            entry["codec"] = (ft.get("info") or {}).get("video.codec")
        features[key] = entry
    return {
        "root": str(ds.root),
        "codebase_version": ds.version,
        "robot_type": ds.info.get("robot_type"),
        "fps": ds.fps,
        "episodes": ds.num_episodes,
        "frames": ds.num_frames,
        "duration_s": round(ds.num_frames / ds.fps, 3),
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "tasks": dict(sorted(ds.tasks.items())),
        "cameras": {k: ("video" if k in ds.video_keys else "image") for k in ds.camera_keys},
        "features": features,
        "files": len(files),
        "size_mb": round(sum(p.stat().st_size for p in files) / 1024**2, 3),
    }
