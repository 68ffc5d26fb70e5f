"""Read LeRobotDataset v3.0 and v2.1 into memory, checking it on the way in.

Training here wants the whole (small, low-dimensional) dataset as arrays, so the reader loads the
parquet data eagerly and decodes camera streams on request. Every inconsistency raises
:class:`DatasetError` naming the file and field.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from robopolicy.data import format as fmt
from robopolicy.data.checksums import check_digest, check_size, file_digest, read_checksums
from robopolicy.data.format import DatasetError
from robopolicy.data.stats import aggregate_stats, from_jsonable, validate_stats
from robopolicy.data.video import decode_frames

log = logging.getLogger(__name__)
# Timestamps are float32 seconds: k / fps within LeRobot's tolerance (1e-4 s) plus float32 rounding.
TIMESTAMP_TOLERANCE_S = 1e-4


@dataclass
class EpisodeVideo:
    path: Path
    from_timestamp: float


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: missing file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing file")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: invalid JSON line ({e})") from e
    return rows


def read_parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path}: missing file")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: unreadable parquet, truncated or corrupt ({e})") from e


def _require(row: dict[str, Any], field: str, where: str) -> Any:
    if field not in row:
        raise DatasetError(f"{where}: field {field!r} is missing")
    return row[field]


class LeRobotDataset:
    """A LeRobot dataset on disk. ``column(key)`` gives (N, *shape) arrays in frame order."""

    def __init__(self, root: str | Path, check_checksums: bool = True):
        """``check_checksums``: hash the metadata and data files read (and each video on its first decode)
        against ``meta/checksums.json`` when the dataset has one."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        self.checksums = read_checksums(self.root) if check_checksums else None
        self._verified_videos: set[Path] = set()
        info_path = self.root / fmt.INFO_PATH
        self.info: dict[str, Any] = _read_json(info_path)
        for field in ("codebase_version", "fps", "features", "total_episodes", "total_frames", "data_path"):
            _require(self.info, field, str(info_path))
        self.version = self.info["codebase_version"]
        if self.version not in fmt.READABLE_VERSIONS:
            raise DatasetError(
                f"{info_path}: codebase_version {self.version!r} is not supported (expected one of {fmt.READABLE_VERSIONS})"
            )
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        fmt.validate_features(self.features, str(info_path))
        if isinstance(self.info["fps"], bool) or not isinstance(self.info["fps"], int | float) \
                or not float(self.info["fps"]).is_integer() or self.info["fps"] <= 0:
            raise DatasetError(f"{info_path}: field 'fps' must be a positive integer, got {self.info['fps']!r}")
        self.fps = int(self.info["fps"])
        self.video_keys = fmt.video_keys(self.features)
        self.image_keys = fmt.image_keys(self.features)  # cameras stored as PNG bytes in the parquet data
        if self.video_keys and not isinstance(self.info.get("video_path"), str):
            raise DatasetError(f"{info_path}: field 'video_path' must be a path template (the dataset has video "
                               f"features {self.video_keys}), got {self.info.get('video_path')!r}")
        if self.version == "v3.0":
            self._load_v30_meta()
        else:
            self._load_v21_meta()
        self._check_episodes()
        self._load_data()
        self._check_stats()
        self._check_timestamps()
        if self.checksums is not None:
            self._check_checksums()
        elif check_checksums:
            log.warning("%s: no checksums (meta/checksums.json); corruption cannot be detected. Run `robopolicy "
                     "dataset action=verify root=%s write=true` to record them", self.root, self.root)

    # ---- metadata ------------------------------------------------------------------------------
    def _load_v30_meta(self) -> None:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{self.root / 'meta/episodes'}: no episode metadata files (expected chunk-XXX/file-XXX.parquet)")
        rows: list[dict[str, Any]] = []
        for path in files:
            rows.extend(read_parquet(path).to_pylist())
        self.episodes = rows
        tasks = read_parquet(self.root / fmt.TASKS_PATH)
        if "task_index" not in tasks.column_names:
            raise DatasetError(f"{self.root / fmt.TASKS_PATH}: field 'task_index' is missing")
        task_col = "task" if "task" in tasks.column_names else "__index_level_0__"
        if task_col not in tasks.column_names:
            raise DatasetError(f"{self.root / fmt.TASKS_PATH}: no task strings (expected index or column 'task')")
        self.tasks = dict(zip(tasks.column("task_index").to_pylist(), tasks.column(task_col).to_pylist()))
        self._stats_where = str(self.root / fmt.STATS_PATH)
        self.stats = from_jsonable(_read_json(self.root / fmt.STATS_PATH), self._stats_where)
        where = str(files[0])
        self._data_files: list[Path] = []
        self._videos: dict[str, list[EpisodeVideo]] = {k: [] for k in self.video_keys}
        seen_files: set[Path] = set()
        for row in rows:
            c, f = _require(row, "data/chunk_index", where), _require(row, "data/file_index", where)
            path = self.root / self.info["data_path"].format(chunk_index=c, file_index=f)
            if path not in seen_files:
                seen_files.add(path)
                self._data_files.append(path)
            for key in self.video_keys:
                vc = _require(row, f"videos/{key}/chunk_index", where)
                vf = _require(row, f"videos/{key}/file_index", where)
                vpath = self.root / self.info["video_path"].format(video_key=key, chunk_index=vc, file_index=vf)
                self._videos[key].append(EpisodeVideo(vpath, float(_require(row, f"videos/{key}/from_timestamp", where))))

    def _load_v21_meta(self) -> None:
        self.episodes = _read_jsonl(self.root / fmt.V21_EPISODES_PATH)
        self.episodes.sort(key=lambda e: e.get("episode_index", -1))
        tasks = _read_jsonl(self.root / fmt.V21_TASKS_PATH)
        self.tasks = {int(_require(t, "task_index", fmt.V21_TASKS_PATH)): _require(t, "task", fmt.V21_TASKS_PATH) for t in tasks}
        chunks_size = int(self.info.get("chunks_size", fmt.DEFAULT_CHUNKS_SIZE))
        start = 0
        self._data_files = []
        self._videos = {k: [] for k in self.video_keys}
        where = str(self.root / fmt.V21_EPISODES_PATH)
        for ep in self.episodes:
            index = int(_require(ep, "episode_index", where))
            length = int(_require(ep, "length", where))
            ep["dataset_from_index"], ep["dataset_to_index"] = start, start + length
            start += length
            chunk = index // chunks_size
            self._data_files.append(self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=index))
            for key in self.video_keys:
                path = self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=index)
                self._videos[key].append(EpisodeVideo(path, 0.0))
        # v2.1's statistics are its per-episode ones (LeRobot aggregates them and ignores a stats.json, which
        # older versions wrote and a converted dataset may still carry); stats.json only when there are none.
        episodes_stats = self.root / fmt.V21_EPISODES_STATS_PATH
        if episodes_stats.is_file():
            self._stats_where = f"{episodes_stats} (aggregated)"
            per_episode = [from_jsonable(_require(r, "stats", str(episodes_stats)), f"{episodes_stats}:{i}")
                           for i, r in enumerate(_read_jsonl(episodes_stats), 1)]
            self.stats = {k: aggregate_stats([s[k] for s in per_episode]) for k in per_episode[0]} if per_episode else {}
        else:
            self._stats_where = str(self.root / fmt.STATS_PATH)
            self.stats = from_jsonable(_read_json(self.root / fmt.STATS_PATH), self._stats_where)

    def _check_episodes(self) -> None:
        where = self.root / ("meta/episodes" if self.version == "v3.0" else fmt.V21_EPISODES_PATH)
        indices = [int(_require(e, "episode_index", str(where))) for e in self.episodes]
        expected = list(range(len(indices)))
        if indices != expected:
            gap = next((i for i, (a, b) in enumerate(zip(indices, expected)) if a != b), len(expected))
            raise DatasetError(
                f"{where}: episode_index has gaps or duplicates: expected 0..{len(indices) - 1} in order, "
                f"found {indices[gap] if gap < len(indices) else 'end'} at position {gap}"
            )
        if len(indices) != self.info["total_episodes"]:
            raise DatasetError(f"{where}: {len(indices)} episodes listed, info.json total_episodes says {self.info['total_episodes']}")
        position = 0
        for e in self.episodes:
            f, t = int(_require(e, "dataset_from_index", str(where))), int(_require(e, "dataset_to_index", str(where)))
            if f != position or t - f != int(_require(e, "length", str(where))):
                raise DatasetError(
                    f"{where}: episode {e['episode_index']} covers frames [{f}, {t}) with length {e['length']}, "
                    f"expected to start at frame {position}"
                )
            position = t
        if position != self.info["total_frames"]:
            raise DatasetError(f"{where}: episodes cover {position} frames, info.json total_frames says {self.info['total_frames']}")

    # ---- data ----------------------------------------------------------------------------------
    def _load_data(self) -> None:
        tables = [read_parquet(p) for p in self._data_files]
        self._columns: dict[str, np.ndarray] = {}
        for key, ft in self.features.items():
            if ft["dtype"] in fmt.VISUAL_DTYPES or ft["dtype"] == "string":
                continue
            parts = []
            for path, table in zip(self._data_files, tables):
                if key not in table.column_names:
                    raise DatasetError(f"{path}: column {key!r} declared in info.json is missing")
                part = fmt.column_to_numpy(table.column(key), ft, f"{path}: column {key!r}")
                if np.issubdtype(part.dtype, np.floating) and not np.isfinite(part).all():
                    row = int(np.argmax(~np.isfinite(part.reshape(len(part), -1)).all(axis=1)))
                    raise DatasetError(f"{path}: column {key!r} has a non-finite value ({part[row].tolist()}) in "
                                       f"row {row}; a policy cannot learn from or normalize NaN/inf")
                parts.append(part)
            self._columns[key] = np.concatenate(parts)
        self._image_bytes: dict[str, pa.Array] = {}
        for key in self.image_keys:
            parts = []
            for path, table in zip(self._data_files, tables):
                if key not in table.column_names:
                    raise DatasetError(f"{path}: column {key!r} declared in info.json is missing")
                parts.append(_png_bytes(table.column(key), f"{path}: column {key!r}"))
            self._image_bytes[key] = pa.concat_arrays(parts)
        n = self.info["total_frames"]
        index = self._columns["index"].reshape(-1)
        if len(index) != n:
            raise DatasetError(f"{self.root / 'data'}: {len(index)} rows, info.json total_frames says {n}")
        if not np.array_equal(index, np.arange(n)):
            bad = int(np.argmax(index != np.arange(n)))
            raise DatasetError(f"{self.root / 'data'}: column 'index' is not contiguous: row {bad} has index {index[bad]}")
        episode_of_row = self._columns["episode_index"].reshape(-1)
        expected = np.repeat(np.arange(len(self.episodes)), [e["length"] for e in self.episodes])
        if not np.array_equal(episode_of_row, expected):
            bad = int(np.argmax(episode_of_row != expected))
            raise DatasetError(
                f"{self.root / 'data'}: column 'episode_index' is {episode_of_row[bad]} at frame {bad}, "
                f"but the episode metadata puts that frame in episode {expected[bad]}"
            )

    # ---- integrity -----------------------------------------------------------------------------
    def _check_stats(self) -> None:
        validate_stats(self.stats, self.features, self._stats_where)

    def _check_timestamps(self) -> None:
        """Each frame's timestamp is frame_index / fps (fps from info.json), frame_index counts 0.. in each
        episode, and each video's episodes tile their file: a wrong fps or shifted times would pair frames with
        the wrong video frames or actions, off by one and silently."""
        where = self.root / "data"
        ts = self._columns["timestamp"].reshape(-1).astype(np.float64)
        frame_index = self._columns["frame_index"].reshape(-1)
        bounds = self.episode_bounds
        within = np.arange(self.num_frames) - np.repeat(bounds[:, 0], bounds[:, 1] - bounds[:, 0])
        if not np.array_equal(frame_index, within):
            bad = int(np.argmax(frame_index != within))
            raise DatasetError(f"{where}: column 'frame_index' is {frame_index[bad]} at frame {bad}, expected "
                               f"{within[bad]} (frames count from 0 in each episode)")
        expected = within / self.fps
        off = np.abs(ts - expected) > TIMESTAMP_TOLERANCE_S + 1e-6 * expected
        if off.any():
            bad = int(np.argmax(off))
            episode = int(np.searchsorted(bounds[:, 1], bad, side="right"))
            raise DatasetError(
                f"{where}: column 'timestamp' is {ts[bad]:.6f} s at frame {bad} (episode {episode}, frame_index "
                f"{within[bad]}), expected frame_index / fps = {expected[bad]:.6f} s with fps={self.fps} from "
                f"{self.root / fmt.INFO_PATH}: the declared fps or the timestamps are wrong")
        info_path = self.root / fmt.INFO_PATH
        for key in self.video_keys:
            video_fps = (self.features[key].get("info") or {}).get("video.fps")
            if video_fps is not None and not np.isclose(float(video_fps), self.fps):
                raise DatasetError(f"{info_path}: field 'features.{key}.info.video.fps' is {video_fps}, the dataset's "
                                   f"fps is {self.fps}")
            if self.version != "v3.0":
                continue
            # A quarter frame: LeRobot derives start times from container durations (millisecond rounding), and a
            # shift only pairs the wrong frame from half a frame on.
            video_tol = 0.25 / self.fps
            next_start: dict[Path, float] = {}
            for e, (episode, video) in enumerate(zip(self.episodes, self._videos[key])):
                start = next_start.get(video.path, 0.0)
                where_e = f"{self.root / 'meta/episodes'}: episode {e}"
                if abs(video.from_timestamp - start) > video_tol:
                    raise DatasetError(f"{where_e}: field 'videos/{key}/from_timestamp' is {video.from_timestamp:.6g} "
                                       f"s, expected {start:.6g} s (where the previous episode in {video.path.name} "
                                       "ends)")
                end = episode.get(f"videos/{key}/to_timestamp")
                length_s = episode["length"] / self.fps
                if end is not None and abs(float(end) - video.from_timestamp - length_s) > video_tol:
                    raise DatasetError(f"{where_e}: fields 'videos/{key}/from_timestamp'..'to_timestamp' span "
                                       f"{float(end) - video.from_timestamp:.6f} s, its {episode['length']} frames at "
                                       f"{self.fps} fps last {length_s:.6f} s")
                next_start[video.path] = float(end) if end is not None else video.from_timestamp + length_s

    def _check_checksums(self) -> None:
        """Metadata and data files were read whole: hash them. Videos: sizes now, content on first decode."""
        assert self.checksums is not None
        for name, entry in self.checksums.items():
            if name.startswith("videos/"):
                check_size(self.root, name, entry)
            else:
                path = self.root / name
                if not path.is_file():
                    raise DatasetError(f"{path}: missing file listed in {self.root / fmt.CHECKSUMS_PATH}")
                check_digest(self.root, name, entry, file_digest(path))
        listed = set(self.checksums)
        unlisted = [p for p in self._data_files if p.relative_to(self.root).as_posix() not in listed]
        if unlisted:
            raise DatasetError(f"{unlisted[0]}: data file not listed in {self.root / fmt.CHECKSUMS_PATH} (added after "
                               "the checksums were written?)")

    def _verify_video(self, path: Path) -> None:
        if self.checksums is None or path in self._verified_videos:
            return
        name = path.relative_to(self.root).as_posix()
        if name not in self.checksums:
            raise DatasetError(f"{path}: video not listed in {self.root / fmt.CHECKSUMS_PATH}")
        check_digest(self.root, name, self.checksums[name], file_digest(path))
        self._verified_videos.add(path)

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def episode_bounds(self) -> np.ndarray:
        """(E, 2) array of [from, to) frame indices per episode."""
        return np.array([[e["dataset_from_index"], e["dataset_to_index"]] for e in self.episodes], dtype=np.int64)

    @property
    def camera_keys(self) -> list[str]:
        """Every camera, stored as video or as images."""
        return [k for k in self.features if k in self.video_keys or k in self.image_keys]

    def column(self, key: str) -> np.ndarray:
        if key in self.video_keys:
            return self.video_frames(key)
        if key in self.image_keys:
            return self.image_frames(key)
        if key not in self._columns:
            raise KeyError(f"{self.root}: no numeric feature {key!r} (features: {sorted(self._columns)})")
        return self._columns[key]

    def video_frames(self, key: str, episode_index: int | None = None) -> np.ndarray:
        """Decoded uint8 frames (N, H, W, 3) of one episode, or of the whole dataset in frame order."""
        if key not in self.video_keys:
            raise KeyError(f"{self.root}: no video feature {key!r} (video features: {self.video_keys})")
        episodes = range(self.num_episodes) if episode_index is None else [episode_index]
        out = []
        for e in episodes:
            video = self._videos[key][e]
            self._verify_video(video.path)
            ts = self.column("timestamp").reshape(-1)[self.episodes[e]["dataset_from_index"] : self.episodes[e]["dataset_to_index"]]
            frames = decode_frames(video.path, video.from_timestamp + ts.astype(np.float64), fps=self.fps)
            expected = tuple(self.features[key]["shape"])
            if frames.shape[1:] != expected:
                raise DatasetError(f"{video.path}: frames of shape {frames.shape[1:]}, info.json declares {key!r} as {expected}")
            out.append(frames)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def image_frames(self, key: str, episode_index: int | None = None) -> np.ndarray:
        """Decoded uint8 frames (N, H, W, C) of an image feature: one episode, or the whole dataset."""
        if key not in self.image_keys:
            raise KeyError(f"{self.root}: no image feature {key!r} (image features: {self.image_keys})")
        start, stop = (0, self.num_frames) if episode_index is None else self.episode_bounds[episode_index]
        return np.stack([self._decode_image(key, i) for i in range(start, stop)])

    def camera_frames(self, key: str, episode_index: int | None = None) -> np.ndarray:
        """Frames of a camera however it is stored (video or images)."""
        if key in self.image_keys:
            return self.image_frames(key, episode_index)
        return self.video_frames(key, episode_index)

    def _decode_image(self, key: str, i: int) -> np.ndarray:
        where = f"{self.root / 'data'}: column {key!r}, frame {i}"
        try:
            with Image.open(io.BytesIO(self._image_bytes[key][i].as_py())) as image:
                frame = np.asarray(image)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{where}: undecodable image ({e})") from e
        if frame.ndim == 2:
            frame = frame[..., None]
        expected = tuple(self.features[key]["shape"])
        if frame.shape != expected or frame.dtype != np.uint8:
            raise DatasetError(f"{where}: image of shape {frame.shape} {frame.dtype}, info.json declares {expected} uint8")
        return frame

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_frames:
            raise IndexError(i)
        frame: dict[str, Any] = {k: v[i] for k, v in self._columns.items()}
        e = int(frame["episode_index"][0])
        for key in self.video_keys:
            video = self._videos[key][e]
            self._verify_video(video.path)
            frame[key] = decode_frames(video.path, np.array([video.from_timestamp + float(frame["timestamp"][0])]), fps=self.fps)[0]
        for key in self.image_keys:
            frame[key] = self._decode_image(key, i)
        frame["task"] = self.tasks.get(int(frame["task_index"][0]))
        return frame


def _png_bytes(column: pa.ChunkedArray, where: str) -> pa.Array:
    """The encoded images of an Image column (`datasets` stores struct<bytes, path>)."""
    if not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
        raise DatasetError(f"{where}: expected an image column struct<bytes, path>, got {column.type}")
    data = column.combine_chunks().field("bytes")
    if data.null_count:
        raise DatasetError(f"{where}: {data.null_count} images have no embedded bytes (only a path); "
                           "expected the PNG bytes inside the parquet file, as LeRobot writes them")
    return data
