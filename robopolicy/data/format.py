"""LeRobotDataset layout: paths, feature specs and the errors a bad dataset raises.

v3.0 (written and read) packs many episodes per data/video file; v2.1 (read only) has one file per
episode. Paths use hyphens (``chunk-000/file-000``) exactly as LeRobot does, so datasets move
between the two projects file for file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v3.0", "v2.1")

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
CHECKSUMS_PATH = "meta/checksums.json"  # robopolicy's; LeRobot ignores it (see data/checksums.py)
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 200  # LeRobot's DEFAULT_VIDEO_FILE_SIZE_IN_MB
# LeRobot's encode_video_frames defaults: a keyframe every 2 frames (so x264 uses at most one B-frame), crf 30,
# yuv420p. Streams that share the GOP structure (and so the decode delay) can be stream-copied into one file,
# which is how LeRobot's aggregate_datasets merges videos.
LEROBOT_VIDEO_GOP = 2

# v2.1
V21_EPISODES_PATH = "meta/episodes.jsonl"
V21_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
V21_TASKS_PATH = "meta/tasks.jsonl"

STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}

# Columns every dataset carries, in LeRobot's order.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
NUMERIC_DTYPES = {"float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
VISUAL_DTYPES = {"video", "image"}


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message names file and field."""


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype("bool" if dtype == "bool" else dtype)


def arrow_type(feature: dict[str, Any]) -> pa.DataType:
    """Arrow type LeRobot (via Hugging Face datasets) uses: scalars for shape (1,), fixed-size lists else."""
    scalar = pa.from_numpy_dtype(numpy_dtype(feature["dtype"]))
    shape = tuple(feature["shape"])
    if shape == (1,):
        return scalar
    if len(shape) == 1:
        return pa.list_(scalar, shape[0])
    # Higher-rank numeric features: nested fixed-size lists, outermost axis first.
    t = scalar
    for n in reversed(shape):
        t = pa.list_(t, n)
    return t


def hf_feature(feature: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face `datasets` feature description LeRobot stores in parquet schema metadata."""
    shape = tuple(feature["shape"])
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": feature["dtype"], "_type": "Value"}
    if shape == (1,):
        return value
    if len(shape) == 1:
        return {"feature": value, "length": shape[0], "_type": "List"}  # `datasets` >= 4 names it List
    return {"shape": list(shape), "dtype": feature["dtype"], "_type": f"Array{len(shape)}D"}


def validate_features(features: dict[str, dict[str, Any]], where: str) -> None:
    for key, ft in features.items():
        for field in ("dtype", "shape"):
            if field not in ft:
                raise DatasetError(f"{where}: feature {key!r} lacks field {field!r}")
        if ft["dtype"] not in NUMERIC_DTYPES | VISUAL_DTYPES | {"string"}:
            raise DatasetError(f"{where}: feature {key!r} has unsupported dtype {ft['dtype']!r}")
        if not isinstance(ft["shape"], list | tuple) or not all(isinstance(n, int) and n > 0 for n in ft["shape"]):
            raise DatasetError(f"{where}: feature {key!r} has invalid shape {ft['shape']!r} (expected positive ints)")
        if ft["dtype"] in VISUAL_DTYPES and len(ft["shape"]) != 3:
            raise DatasetError(f"{where}: camera feature {key!r} must have shape (H, W, C), got {ft['shape']}")


def validate_writable_features(features: dict[str, dict[str, Any]], where: str) -> None:
    """validate_features, plus what the crash-safe recorder writes: cameras as video, not per-frame images."""
    validate_features(features, where)
    images = [k for k, ft in features.items() if ft["dtype"] == "image"]
    if images:
        raise DatasetError(f"{where}: features {images} have dtype 'image' (PNG frames in the parquet files), which "
                           "this writer does not write; declare cameras with dtype 'video'")


def video_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    return [k for k, ft in features.items() if ft["dtype"] == "video"]


def image_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    """Cameras stored as one PNG per frame inside the parquet data (LeRobot's ``use_videos=False``)."""
    return [k for k, ft in features.items() if ft["dtype"] == "image"]


# How `datasets` stores an Image feature in parquet: encoded bytes plus the source file name.
IMAGE_ARROW_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def column_to_numpy(column: pa.ChunkedArray | pa.Array, feature: dict[str, Any], where: str) -> np.ndarray:
    """A parquet column as an (N, *shape) array, checked against the declared feature."""
    key_shape = tuple(feature["shape"])
    dtype = numpy_dtype(feature["dtype"])
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    values = column
    depth = 0
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) or pa.types.is_large_list(values.type):
        values = values.flatten()
        depth += 1
    if column.null_count:
        raise DatasetError(f"{where}: column has {column.null_count} null values")
    flat = values.to_numpy(zero_copy_only=False)
    expected = n * int(np.prod(key_shape))
    if flat.size != expected:
        raise DatasetError(
            f"{where}: shape mismatch: {n} rows with {flat.size} values in all, expected shape {list(key_shape)} per row"
        )
    if depth == 0 and key_shape != (1,):
        raise DatasetError(f"{where}: stored as scalars, expected shape {list(key_shape)}")
    if flat.dtype != dtype and not (np.issubdtype(flat.dtype, np.floating) and np.issubdtype(dtype, np.floating)):
        if not np.can_cast(flat.dtype, dtype, casting="same_kind"):
            raise DatasetError(f"{where}: dtype mismatch: stored {flat.dtype}, declared {feature['dtype']}")
    return flat.astype(dtype, copy=False).reshape((n, *key_shape))


VIDEO_CODEC_NAMES = {"libx264": "h264", "libx264rgb": "h264", "libsvtav1": "av1"}


def info_features(features: dict[str, dict[str, Any]], fps: int, video_codec: str) -> dict[str, dict[str, Any]]:
    """``info.json`` feature entries; video features get LeRobot's ``info`` block unless they carry one."""
    out = {}
    for key, ft in features.items():
        entry = {"dtype": ft["dtype"], "shape": list(ft["shape"]), "names": ft.get("names")}
        if ft["dtype"] == "video":
            h, w, c = ft["shape"]
            entry["names"] = ft.get("names") or ["height", "width", "channels"]
            entry["info"] = ft.get("info") or {
                "video.height": h,
                "video.width": w,
                "video.codec": VIDEO_CODEC_NAMES.get(video_codec, video_codec),
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": c,
                "has_audio": False,
            }
        out[key] = entry
    return out


def episode_record(*, episode_index: int, task: str, length: int, chunk_index: int, file_index: int,
                   from_index: int) -> dict[str, Any]:
    """The leading columns of an episode's row in meta/episodes (stats and video locations follow)."""
    return {
        "episode_index": episode_index,
        "tasks": [task],
        "length": length,
        "data/chunk_index": chunk_index,
        "data/file_index": file_index,
        "dataset_from_index": from_index,
        "dataset_to_index": from_index + length,
    }


def build_info(*, features: dict[str, dict[str, Any]], fps: int, robot_type: str | None, video_codec: str,
               total_episodes: int, total_frames: int, total_tasks: int, chunks_size: int,
               data_files_size_in_mb: float, video_files_size_in_mb: float,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete v3.0 ``meta/info.json``."""
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": total_tasks,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb,
        "video_files_size_in_mb": video_files_size_in_mb,
        **(extra or {}),
        "fps": fps,
        "splits": {"train": f"0:{total_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_keys(features) else None,
        "features": info_features(features, fps, video_codec),
    }


def fsize_mb(path: Path) -> float:
    return path.stat().st_size / 1024**2
