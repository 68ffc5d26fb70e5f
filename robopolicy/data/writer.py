"""Write LeRobotDataset v3.0: episodes packed into shared parquet and MP4 files.

Use as a context manager so that leaving the block (normally or through an exception) finalizes
the dataset: every episode already saved is written out, video files get their index, ``meta/checksums.json``
lists every file's sha256 (see :mod:`robopolicy.data.checksums`), and ``meta/info.json`` is written last, so a
dataset with an info file is always complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from robopolicy.data import format as fmt
from robopolicy.data.checksums import bytes_digest, checksums_document, compute_checksums
from robopolicy.data.format import DatasetError
from robopolicy.data.stats import aggregate_stats, image_stats, numeric_stats, to_jsonable
from robopolicy.data.video import VideoAppender
from robopolicy.utils.io import atomic_write_text, fsync_dir


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Parquet written to a temporary name and renamed: a crash never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="snappy")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class LeRobotDatasetWriter:
    """Append episodes, then ``finalize()``.

    ``features`` maps names to ``{"dtype", "shape", "names"}`` (LeRobot's form); the default columns
    (timestamp, frame_index, episode_index, index, task_index) are added automatically. Camera
    features receive uint8 (H, W, 3) frames: dtype ``video`` packs them into MP4 files, dtype ``image``
    stores one PNG per frame inside the parquet data. ``use_videos=False`` stores every camera as
    images, like LeRobot's ``LeRobotDataset.create(use_videos=False)``.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        video_codec: str = "libx264",
        video_crf: int = 18,
        chunks_size: int = fmt.DEFAULT_CHUNKS_SIZE,
        data_files_size_in_mb: float = fmt.DEFAULT_DATA_FILE_SIZE_MB,
        video_files_size_in_mb: float = fmt.DEFAULT_VIDEO_FILE_SIZE_MB,
        overwrite: bool = False,
        use_videos: bool = True,
    ):
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.root}: directory is not empty (pass overwrite=True to replace it)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        fmt.validate_features(features, "features")
        if not use_videos:
            features = {k: {**v, "dtype": "image"} if v["dtype"] == "video" else v for k, v in features.items()}
        reserved = set(features) & set(fmt.DEFAULT_FEATURES)
        if reserved:
            raise ValueError(f"features {sorted(reserved)} are added by the writer; do not declare them")
        self.fps = int(fps)
        self.robot_type = robot_type
        self.user_features = {k: {**v, "shape": list(v["shape"])} for k, v in features.items()}
        self.features = {**self.user_features, **fmt.DEFAULT_FEATURES}
        self.video_keys = fmt.video_keys(self.features)
        self.image_keys = fmt.image_keys(self.features)
        self.data_keys = [k for k, ft in self.features.items() if ft["dtype"] not in fmt.VISUAL_DTYPES]
        # Parquet columns in declared order: numeric features and images (videos live in MP4 files).
        self.parquet_keys = [k for k, ft in self.features.items() if ft["dtype"] != "video"]
        self.video_codec, self.video_crf = video_codec, video_crf
        self.chunks_size = chunks_size
        self.data_files_size_in_mb = data_files_size_in_mb
        self.video_files_size_in_mb = video_files_size_in_mb

        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.total_frames = 0
        self._frame_buffer: list[dict[str, Any]] = []
        self._data_file = (0, 0)  # (chunk_index, file_index)
        self._pending_columns: dict[str, list[np.ndarray]] = {k: [] for k in self.parquet_keys}
        self._pending_bytes = 0
        self._all_numeric: dict[str, list[np.ndarray]] = {k: [] for k in self.data_keys}
        self._image_episode_stats: dict[str, list[dict[str, np.ndarray]]] = {
            k: [] for k in self.video_keys + self.image_keys}
        self._videos: dict[str, VideoAppender] = {}
        self._video_file: dict[str, tuple[int, int]] = {k: (0, 0) for k in self.video_keys}
        self._finalized = False

    # ---- adding data -------------------------------------------------------------------------
    def add_frame(self, frame: dict[str, Any]) -> None:
        """Buffer one frame (feature values plus ``task``) of the episode in progress."""
        missing = set(self.user_features) - set(frame)
        if missing:
            raise KeyError(f"frame lacks features {sorted(missing)}")
        self._frame_buffer.append(frame)

    def clear_episode_buffer(self) -> None:
        """Drop the episode in progress (for re-recording it)."""
        self._frame_buffer.clear()

    def save_episode(self, task: str | None = None) -> int:
        """Write the buffered frames as one episode and return its index."""
        if not self._frame_buffer:
            raise ValueError("no frames buffered for this episode")
        task = task or self._frame_buffer[0].get("task")
        if task is None:
            raise ValueError("episode has no task: pass task= or put 'task' in the frames")
        data = {k: np.stack([np.asarray(f[k]) for f in self._frame_buffer]) for k in self.user_features}
        self._frame_buffer.clear()
        return self.add_episode(data, task)

    def add_episode(self, data: dict[str, np.ndarray], task: str) -> int:
        """Write one whole episode given as arrays (N, *shape) per feature."""
        if self._finalized:
            raise RuntimeError("dataset is finalized")
        lengths = {k: len(v) for k, v in data.items()}
        if set(lengths) != set(self.user_features):
            raise KeyError(f"episode features {sorted(lengths)} differ from declared {sorted(self.user_features)}")
        n = next(iter(lengths.values()))
        if n == 0 or any(v != n for v in lengths.values()):
            raise ValueError(f"episode features have unequal or zero lengths: {lengths}")
        episode_index = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        columns: dict[str, np.ndarray] = {}
        for key in self.user_features:
            ft = self.features[key]
            value = np.asarray(data[key])
            frame_shape = tuple(value.shape[1:])
            if frame_shape != tuple(ft["shape"]) and not (frame_shape == () and ft["shape"] == [1]):
                raise ValueError(f"feature {key!r}: frames of shape {value.shape[1:]}, declared {tuple(ft['shape'])}")
            if ft["dtype"] in fmt.VISUAL_DTYPES:
                if value.dtype != np.uint8:
                    raise ValueError(f"feature {key!r}: camera frames must be uint8, got {value.dtype}")
                if ft["dtype"] == "image":
                    columns[key] = encode_png_frames(value)
                continue
            columns[key] = value.astype(fmt.numpy_dtype(ft["dtype"])).reshape(n, *ft["shape"])
            if np.issubdtype(columns[key].dtype, np.floating) and not np.isfinite(columns[key]).all():
                frame = int(np.argmax(~np.isfinite(columns[key].reshape(n, -1)).all(axis=1)))
                raise ValueError(f"feature {key!r}: non-finite value {columns[key][frame].tolist()} in frame {frame} "
                                 "of the episode; nothing of it was written")
        columns["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)[:, None]
        columns["frame_index"] = np.arange(n, dtype=np.int64)[:, None]
        columns["episode_index"] = np.full((n, 1), episode_index, dtype=np.int64)
        columns["index"] = np.arange(self.total_frames, self.total_frames + n, dtype=np.int64)[:, None]
        columns["task_index"] = np.full((n, 1), task_index, dtype=np.int64)

        # Roll the data file over before this episode if it would grow past its size.
        episode_bytes = sum(_nbytes(c) for c in columns.values())
        if self._pending_bytes and (self._pending_bytes + episode_bytes) / 1024**2 > self.data_files_size_in_mb:
            self._flush_data_file()
        chunk_index, file_index = self._data_file
        episode = fmt.episode_record(episode_index=episode_index, task=task, length=n, chunk_index=chunk_index,
                                     file_index=file_index, from_index=self.total_frames)
        stats = {key: numeric_stats(columns[key]) for key in self.data_keys}
        for key in self.image_keys:
            stats[key] = image_stats(np.asarray(data[key])[:: max(1, n // 50)])
            stats[key]["count"] = np.array([n])
        for key in self.video_keys:
            frames = np.asarray(data[key])
            video = self._video_for(key)
            start = video.timestamp
            video.append(frames)
            c, f = self._video_file[key]
            episode.update(
                {
                    f"videos/{key}/chunk_index": c,
                    f"videos/{key}/file_index": f,
                    f"videos/{key}/from_timestamp": start,
                    f"videos/{key}/to_timestamp": video.timestamp,
                }
            )
            stats[key] = image_stats(frames[:: max(1, n // 50)])
            stats[key]["count"] = np.array([n])
        # Commit the rows only now that every video took its frames: an episode whose video append failed
        # leaves no rows behind (its frames, if any reached a video file, are referenced by no episode).
        for key in self.video_keys + self.image_keys:
            self._image_episode_stats[key].append(stats[key])
        for key in self.parquet_keys:
            self._pending_columns[key].append(columns[key])
        for key in self.data_keys:
            self._all_numeric[key].append(columns[key])
        self._pending_bytes += episode_bytes
        episode["meta/episodes/chunk_index"] = 0
        episode["meta/episodes/file_index"] = 0
        for key, s in stats.items():
            for name in fmt.STAT_NAMES:
                episode[f"stats/{key}/{name}"] = np.asarray(s[name]).tolist()
        self.episodes.append(episode)
        self.total_frames += n
        return episode_index

    def _video_for(self, key: str) -> VideoAppender:
        video = self._videos.get(key)
        if video is not None and video.size_mb() > self.video_files_size_in_mb:
            video.close()
            self._video_file[key] = self._next_file(*self._video_file[key])
            video = None
        if video is None:
            c, f = self._video_file[key]
            h, w, _ = self.features[key]["shape"]
            path = self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
            video = VideoAppender(path, self.fps, h, w, codec=self.video_codec, crf=self.video_crf)
            self._videos[key] = video
        return video

    def _next_file(self, chunk_index: int, file_index: int) -> tuple[int, int]:
        file_index += 1
        if file_index >= self.chunks_size:
            return chunk_index + 1, 0
        return chunk_index, file_index

    def _schema(self) -> pa.Schema:
        fields = [pa.field(k, fmt.IMAGE_ARROW_TYPE if k in self.image_keys else fmt.arrow_type(self.features[k]))
                  for k in self.parquet_keys]
        hf = {"info": {"features": {k: fmt.hf_feature(self.features[k]) for k in self.parquet_keys}}}
        return pa.schema(fields, metadata={"huggingface": json.dumps(hf)})

    def _flush_data_file(self) -> None:
        if not self._pending_bytes:
            return
        schema = self._schema()
        arrays = []
        frame_index = np.concatenate(self._pending_columns["frame_index"]).reshape(-1)
        for key in self.parquet_keys:
            values = np.concatenate(self._pending_columns[key])
            if key in self.image_keys:  # the file name `datasets` records: the frame's PNG in its episode
                arrays.append(image_array(values, [f"frame-{i:06d}.png" for i in frame_index]))
            else:
                arrays.append(_to_arrow(values, schema.field(key).type))
        c, f = self._data_file
        write_parquet_atomic(pa.Table.from_arrays(arrays, schema=schema), self.root / fmt.DATA_PATH.format(chunk_index=c, file_index=f))
        self._pending_columns = {k: [] for k in self.data_keys}
        self._pending_bytes = 0
        self._data_file = self._next_file(c, f)

    # ---- finishing -----------------------------------------------------------------------------
    def finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        for video in self._videos.values():
            video.close()
        if not self.episodes:
            raise ValueError(f"{self.root}: no episodes were recorded")
        self._flush_data_file()
        self._write_episodes()
        self._write_tasks()
        stats = {k: numeric_stats(np.concatenate(v)) for k, v in self._all_numeric.items()}
        for key, per_episode in self._image_episode_stats.items():
            stats[key] = aggregate_stats(per_episode)
        atomic_write_text(self.root / fmt.STATS_PATH, json.dumps(to_jsonable(stats), indent=2))
        info = json.dumps(self._info(), indent=2)
        files = {**compute_checksums(self.root), fmt.INFO_PATH: bytes_digest(info.encode())}
        atomic_write_text(self.root / fmt.CHECKSUMS_PATH, checksums_document(files))
        atomic_write_text(self.root / fmt.INFO_PATH, info)

    def _write_episodes(self) -> None:
        columns: dict[str, list[Any]] = {k: [e[k] for e in self.episodes] for k in self.episodes[0]}
        table = pa.table({k: pa.array(v) for k, v in columns.items()})
        write_parquet_atomic(table, self.root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0))

    def _write_tasks(self) -> None:
        write_parquet_atomic(tasks_table(self.tasks), self.root / fmt.TASKS_PATH)

    def _info(self) -> dict[str, Any]:
        return fmt.build_info(features=self.features, fps=self.fps, robot_type=self.robot_type,
                              video_codec=self.video_codec, total_episodes=len(self.episodes),
                              total_frames=self.total_frames, total_tasks=len(self.tasks), chunks_size=self.chunks_size,
                              data_files_size_in_mb=self.data_files_size_in_mb,
                              video_files_size_in_mb=self.video_files_size_in_mb)

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.episodes:
            self.finalize()
        else:
            for video in self._videos.values():
                video.close()


TASKS_INDEX_COLUMN = "__index_level_0__"


def tasks_table(tasks: dict[str, int]) -> pa.Table:
    """``meta/tasks.parquet`` as LeRobot (pandas) writes it: task strings are an unnamed index, task_index a column."""
    ordered = sorted(tasks.items(), key=lambda kv: kv[1])
    pandas_meta = {
        "index_columns": [TASKS_INDEX_COLUMN],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": TASKS_INDEX_COLUMN, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([pa.field("task_index", pa.int64()), pa.field(TASKS_INDEX_COLUMN, pa.large_string())],
                       metadata={"pandas": json.dumps(pandas_meta)})
    return pa.table({"task_index": [i for _, i in ordered], TASKS_INDEX_COLUMN: [t for t, _ in ordered]}, schema=schema)


def encode_png_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) frames as an object array of PNG bytes (compress level 1, as LeRobot saves them)."""
    out = np.empty(len(frames), dtype=object)
    for i, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG", compress_level=1)
        out[i] = buffer.getvalue()
    return out


def _nbytes(column: np.ndarray) -> int:
    return sum(len(b) for b in column) if column.dtype == object else column.nbytes


def image_array(png_bytes: np.ndarray, paths: list[str]) -> pa.StructArray:
    """An Image column as `datasets` writes it: struct<bytes, path>."""
    return pa.StructArray.from_arrays([pa.array(list(png_bytes), pa.binary()), pa.array(paths, pa.string())],
                                      fields=list(fmt.IMAGE_ARROW_TYPE))


def _to_arrow(values: np.ndarray, arrow_t: pa.DataType) -> pa.Array:
    if not (pa.types.is_fixed_size_list(arrow_t) or pa.types.is_list(arrow_t)):
        return pa.array(values.reshape(-1), type=arrow_t)
    n = values.shape[0]
    flat = pa.array(values.reshape(-1))
    t = arrow_t
    sizes = []
    while pa.types.is_fixed_size_list(t):
        sizes.append(t.list_size)
        t = t.value_type
    arr: pa.Array = flat
    for size in reversed(sizes):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    if len(arr) != n:
        raise DatasetError(f"internal: {len(arr)} rows for {n} frames")
    return arr
