"""Crash-safe recording of LeRobotDataset v3.0, one durable episode at a time.

:class:`~robopolicy.data.writer.LeRobotDatasetWriter` writes everything at ``finalize()``; a crash
before that loses the whole session. :class:`DatasetRecorder` instead leaves a complete, valid v3.0
dataset on disk after every saved episode:

- Every episode gets its own data file ``data/chunk-C/file-F.parquet`` and, per camera, its own
  ``videos/<key>/chunk-C/file-F.mp4`` (v3.0 allows one episode per file; ``F`` runs up to
  ``chunks_size - 1`` and then the chunk index increases). Camera frames are encoded while the
  episode runs, into a staging file under ``.recorder/``; low-dimensional frames are kept in memory.
- ``save_episode()`` closes the episode's videos (so they carry their index and are readable),
  moves them into place, writes the data parquet (temporary name + fsync + rename) and then
  *commits*: a complete new ``meta/`` directory (info.json, stats.json, tasks.parquet, episodes
  parquet) is built under ``.recorder/`` and atomically exchanged with ``meta/`` (Linux
  ``renameat2(RENAME_EXCHANGE)``). Until the exchange, the files of the new episode are not
  referenced by any metadata; after it, the episode is durable. A ``kill -9`` at any point loses at
  most the episode in progress, and the dataset opens with :class:`~robopolicy.data.reader.LeRobotDataset`.
  (Where ``renameat2`` is unavailable, e.g. macOS, the commit is two renames; a crash between them is
  repaired the next time a recorder opens the dataset.)
- Opening a recorder on an existing dataset resumes it: new episodes are appended, and leftovers of
  a crash (staging files, data/video files no episode references) are removed; so are those of a crash
  in the very first save, which leaves files but no ``meta/``.
- ``discard_episode()`` drops the episode in progress (re-record).

Integrity: ``meta/checksums.json`` (see :mod:`robopolicy.data.checksums`) is rebuilt inside every commit from
the new episode's file hashes and those already listed, so it always matches the committed metadata.
``meta/robopolicy_recording.json`` keeps each episode's seed and the next one: a resumed session continues the
seed sequence instead of re-recording episodes 0, 1, ... bit for bit (:meth:`DatasetRecorder.resume_seed`).

Statistics: ``stats.json`` aggregates the per-episode statistics (exact min/max/mean/std/count;
quantiles as count-weighted means of per-episode quantiles, as LeRobot aggregates them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from robopolicy.data import format as fmt
from robopolicy.data.checksums import (
    checksums_document,
    compute_checksums,
    dataset_files,
    file_digest,
    read_checksums,
)
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import read_parquet
from robopolicy.data.stats import aggregate_stats, image_stats, numeric_stats, to_jsonable
from robopolicy.data.video import VideoAppender
from robopolicy.data.writer import _to_arrow, tasks_table, write_parquet_atomic
from robopolicy.utils.io import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

STAGING_DIR = ".recorder"
# robopolicy's recording state, committed with each episode: the seed sequence continues across sessions.
RECORDING_PATH = "meta/robopolicy_recording.json"
_MAX_STAT_FRAMES = 64  # camera frames kept per episode for image statistics


# ---- atomic directory exchange ------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _renameat2 = _libc.renameat2
        _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        _renameat2.restype = ctypes.c_int
    except (OSError, AttributeError):
        _renameat2 = None


def exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two directories; False when the platform or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL (fs without RENAME_EXCHANGE), EOPNOTSUPP
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ---- recorder -----------------------------------------------------------------------------------


class DatasetRecorder:
    """Record episodes into a LeRobotDataset v3.0 that is valid on disk after every ``save_episode()``.

    ``features`` maps names to ``{"dtype", "shape", "names"}`` as for the writer (camera features have
    dtype ``video`` and receive uint8 (H, W, 3) frames). If ``root`` already holds a dataset it is
    resumed (its features and fps must match) unless ``resume=False``, which raises; ``overwrite=True``
    deletes it instead. ``features`` may be omitted when resuming.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int | None = None,
        features: dict[str, dict[str, Any]] | None = None,
        robot_type: str | None = None,
        resume: bool = True,
        overwrite: bool = False,
        video_codec: str = "libx264",
        video_crf: int = 18,
        chunks_size: int = fmt.DEFAULT_CHUNKS_SIZE,
    ):
        self.root = Path(root)
        self.staging = self.root / STAGING_DIR
        self.video_codec, self.video_crf = video_codec, video_crf
        info_path = self.root / fmt.INFO_PATH
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)
        self._recover_interrupted_commit()
        exists = info_path.is_file()
        if exists and not resume:
            raise FileExistsError(f"{self.root}: a dataset exists (resume=True appends to it, overwrite=True replaces it)")
        if not exists and self.root.exists():
            self._remove_uncommitted_first_episode()
        if not exists and self.root.exists() and any(p.name != STAGING_DIR for p in self.root.iterdir()):
            raise FileExistsError(f"{self.root}: directory is not empty and holds no dataset (meta/info.json)")
        self.root.mkdir(parents=True, exist_ok=True)
        if exists:
            self._open_existing(fps, features, robot_type)
        else:
            if fps is None or features is None:
                raise ValueError("a new dataset needs fps and features")
            fmt.validate_writable_features(features, "features")
            reserved = set(features) & set(fmt.DEFAULT_FEATURES)
            if reserved:
                raise ValueError(f"features {sorted(reserved)} are added by the recorder; do not declare them")
            self.fps = int(fps)
            self.robot_type = robot_type
            self.chunks_size = int(chunks_size)
            self.user_features = {k: {**v, "shape": list(v["shape"])} for k, v in features.items()}
            self.features = {**self.user_features, **fmt.DEFAULT_FEATURES}
            self.episodes: list[dict[str, Any]] = []
            self.tasks: dict[str, int] = {}
            self.total_frames = 0
            self._next_data_file = (0, 0)
            self._next_video_file: dict[str, tuple[int, int]] = {}
            self._info_extra: dict[str, Any] = {}
        self.video_keys = fmt.video_keys(self.features)
        self.data_keys = [k for k, ft in self.features.items() if ft["dtype"] not in fmt.VISUAL_DTYPES]
        for key in self.video_keys:
            self._next_video_file.setdefault(key, (0, 0))
        self._remove_orphans()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._file_digests = self._data_file_digests()
        self._recording = self._read_recording()
        self._buffer: list[dict[str, Any]] = []
        self._videos: dict[str, VideoAppender] = {}
        self._stat_frames: dict[str, list[np.ndarray]] = {}
        self._stat_stride = 1
        self._closed = False

    # ---- opening -----------------------------------------------------------------------------
    def _recover_interrupted_commit(self) -> None:
        """Finish a two-rename commit (non-Linux fallback) that a crash cut in half."""
        meta, nxt, old = self.root / "meta", self.staging / "meta-next", self.staging / "meta-old"
        if not meta.exists() and (nxt / "info.json").is_file():
            os.replace(nxt, meta)
        elif not meta.exists() and (old / "info.json").is_file():
            os.replace(old, meta)

    def _open_existing(self, fps: int | None, features: dict[str, dict[str, Any]] | None, robot_type: str | None) -> None:
        info_path = self.root / fmt.INFO_PATH
        info = json.loads(info_path.read_text())
        if info.get("codebase_version") != fmt.CODEBASE_VERSION:
            raise DatasetError(f"{info_path}: can only append to {fmt.CODEBASE_VERSION} datasets, "
                               f"found {info.get('codebase_version')!r}")
        self.fps = int(info["fps"])
        if fps is not None and int(fps) != self.fps:
            raise ValueError(f"{self.root}: dataset has fps {self.fps}, recorder asked for {fps}")
        stored = info["features"]
        self.user_features = {k: {"dtype": v["dtype"], "shape": list(v["shape"]), "names": v.get("names")}
                              for k, v in stored.items() if k not in fmt.DEFAULT_FEATURES}
        if features is not None:
            want = {k: (v["dtype"], list(v["shape"])) for k, v in features.items()}
            have = {k: (v["dtype"], v["shape"]) for k, v in self.user_features.items()}
            if want != have:
                raise ValueError(f"{self.root}: features differ from the dataset's: asked {want}, dataset has {have}")
            for k, v in features.items():  # keep names the caller gives (the dataset's for video)
                if self.user_features[k]["dtype"] != "video":
                    self.user_features[k]["names"] = v.get("names", self.user_features[k]["names"])
        self.features = {**self.user_features, **fmt.DEFAULT_FEATURES}
        for k, v in stored.items():  # keep the full stored entries (video info) for rewriting info.json
            if "info" in v:
                self.features[k] = {**self.features[k], "info": v["info"]}
        self.robot_type = info.get("robot_type") if robot_type is None else robot_type
        self.chunks_size = int(info.get("chunks_size", fmt.DEFAULT_CHUNKS_SIZE))
        known = {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                 "fps", "splits", "data_path", "video_path", "features"}
        self._info_extra = {k: v for k, v in info.items() if k not in known}
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        self.episodes = []
        for path in files:
            self.episodes.extend(read_parquet(path).to_pylist())
        self.episodes.sort(key=lambda e: e["episode_index"])
        if len(self.episodes) != info["total_episodes"]:
            raise DatasetError(f"{self.root}: {len(self.episodes)} episode rows, info.json says {info['total_episodes']}")
        tasks = read_parquet(self.root / fmt.TASKS_PATH)
        task_col = "task" if "task" in tasks.column_names else "__index_level_0__"
        self.tasks = dict(zip(tasks.column(task_col).to_pylist(), tasks.column("task_index").to_pylist()))
        self.total_frames = int(info["total_frames"])
        video_keys = fmt.video_keys(self.features)
        self._next_data_file = self._after_pairs([(e["data/chunk_index"], e["data/file_index"]) for e in self.episodes])
        self._next_video_file = {
            k: self._after_pairs([(e[f"videos/{k}/chunk_index"], e[f"videos/{k}/file_index"]) for e in self.episodes])
            for k in video_keys
        }

    def _after_pairs(self, pairs: list[tuple[int, int]]) -> tuple[int, int]:
        if not pairs:
            return (0, 0)
        return self._next_file(*max(pairs))

    def _next_file(self, chunk_index: int, file_index: int) -> tuple[int, int]:
        file_index += 1
        if file_index >= self.chunks_size:
            return chunk_index + 1, 0
        return chunk_index, file_index

    def _remove_orphans(self) -> None:
        """Delete data/video files no episode references (written by a save that a crash cut short)."""
        referenced = {self.root / fmt.DATA_PATH.format(chunk_index=e["data/chunk_index"], file_index=e["data/file_index"])
                      for e in self.episodes}
        for key in self.video_keys:
            referenced |= {self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=e[f"videos/{key}/chunk_index"],
                                                             file_index=e[f"videos/{key}/file_index"])
                           for e in self.episodes}
        candidates = list((self.root / "data").glob("chunk-*/file-*.parquet"))
        candidates += list((self.root / "data").glob("chunk-*/.file-*.parquet.tmp"))
        for key in self.video_keys:
            candidates += list((self.root / "videos" / key).glob("chunk-*/file-*.mp4"))
        for path in candidates:
            if path not in referenced:
                path.unlink()

    def _data_file_digests(self) -> dict[str, dict[str, Any]]:
        """Checksums of the committed data and video files, from meta/checksums.json or (a dataset written
        without one, e.g. by LeRobot) computed once now."""
        if not self.episodes:
            return {}
        listed = read_checksums(self.root)
        if listed is None:
            log.info("%s: no meta/checksums.json; hashing the existing files once", self.root)
            listed = compute_checksums(self.root)
        present = set(dataset_files(self.root))
        return {n: e for n, e in listed.items() if not n.startswith("meta/") and n in present}

    def _read_recording(self) -> dict[str, Any]:
        path = self.root / RECORDING_PATH
        if not path.is_file():
            return {"seeds": [None] * len(self.episodes), "next_seed": None}
        try:
            state = json.loads(path.read_text())
            seeds, next_seed = state["seeds"], state["next_seed"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}: unreadable recording state ({e!r}); expected {{seeds, next_seed}}") from e
        if not isinstance(seeds, list) or len(seeds) != len(self.episodes) or not (
                next_seed is None or type(next_seed) is int):
            raise DatasetError(f"{path}: field 'seeds' must list one seed per episode ({len(self.episodes)}) and "
                               f"'next_seed' be an integer or null, got {state!r:.200}")
        return {"seeds": seeds, "next_seed": next_seed}

    def resume_seed(self, seed: int | None) -> int | None:
        """The seed the next episode should use: where the dataset's sequence left off, else ``seed``.

        Seeding a resumed session with the same ``seed`` as the first would replay its episodes exactly.
        """
        stored = self._recording["next_seed"]
        if stored is None:
            return seed
        if seed is not None and seed != stored:
            log.info("%s: continuing the dataset's seed sequence at %d (seed=%d was given)", self.root, stored, seed)
        return stored

    @property
    def episode_seeds(self) -> list[int | None]:
        """The seed each saved episode was recorded with (None: not recorded, or not seeded)."""
        return list(self._recording["seeds"])

    # ---- recording ---------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def episode_frames(self) -> int:
        """Frames of the episode in progress."""
        return len(self._buffer)

    def add_frame(self, frame: dict[str, Any]) -> None:
        """Add one frame (every feature, optionally ``task``) to the episode in progress."""
        if self._closed:
            raise RuntimeError("recorder is closed")
        missing = set(self.user_features) - set(frame)
        if missing:
            raise KeyError(f"frame lacks features {sorted(missing)}")
        row: dict[str, Any] = {}
        keep_stats = len(self._buffer) % self._stat_stride == 0
        for key, ft in self.user_features.items():
            value = np.asarray(frame[key])
            shape = tuple(ft["shape"])
            if value.shape != shape and not (value.shape == () and shape == (1,)):
                raise ValueError(f"feature {key!r}: frame of shape {value.shape}, declared {shape}")
            if ft["dtype"] == "video":
                if value.dtype != np.uint8:
                    raise ValueError(f"feature {key!r}: video frames must be uint8, got {value.dtype}")
                self._video(key).append(value[None])
                if keep_stats:
                    self._stat_frames.setdefault(key, []).append(value.copy())
            else:
                row[key] = value.astype(fmt.numpy_dtype(ft["dtype"])).reshape(shape)
                if np.issubdtype(row[key].dtype, np.floating) and not np.isfinite(row[key]).all():
                    raise ValueError(f"feature {key!r}: non-finite value {row[key].tolist()} in frame "
                                     f"{len(self._buffer)} of the episode in progress; the frame was not added")
        if "task" in frame:
            row["task"] = frame["task"]
        self._buffer.append(row)
        if self._stat_frames and len(next(iter(self._stat_frames.values()))) > _MAX_STAT_FRAMES:
            self._stat_stride *= 2  # keep a uniform subsample of at most _MAX_STAT_FRAMES frames
            self._stat_frames = {k: v[::2] for k, v in self._stat_frames.items()}

    def _video(self, key: str) -> VideoAppender:
        video = self._videos.get(key)
        if video is None:
            self.staging.mkdir(parents=True, exist_ok=True)
            h, w, _ = self.features[key]["shape"]
            video = VideoAppender(self.staging / f"{key}.mp4", self.fps, h, w, codec=self.video_codec, crf=self.video_crf)
            self._videos[key] = video
        return video

    def discard_episode(self) -> None:
        """Drop the episode in progress (the operator re-records it)."""
        for video in self._videos.values():
            video.close()
        self._videos.clear()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._buffer.clear()
        self._stat_frames.clear()
        self._stat_stride = 1

    clear_episode_buffer = discard_episode  # the writer's name for it

    def save_episode(self, task: str | None = None, seed: int | None = None) -> int:
        """Make the episode in progress durable and part of the dataset; returns its index.

        ``seed``: the seed the episode was recorded with; it is committed with the episode, and the next
        session's :meth:`resume_seed` continues after it.

        If it raises (disk full, an encoder error), nothing was committed and the episode stays buffered:
        call it again to retry, or :meth:`discard_episode` to drop it.
        """
        try:
            return self._save_episode(task, seed)
        except Exception as e:
            if self._buffer:
                e.add_note(f"{self.root}: the episode ({len(self._buffer)} frames) is still buffered: call "
                           "save_episode() again to retry, or discard_episode() before recording the next one")
            raise

    def _save_episode(self, task: str | None, seed: int | None) -> int:
        if self._closed:
            raise RuntimeError("recorder is closed")
        if not self._buffer:
            raise ValueError("no frames recorded for this episode")
        task = task or self._buffer[0].get("task")
        if task is None:
            raise ValueError("episode has no task: pass task= or put 'task' in the frames")
        n = len(self._buffer)
        episode_index = len(self.episodes)
        new_task = task not in self.tasks
        task_index = self.tasks[task] if not new_task else len(self.tasks)

        columns: dict[str, np.ndarray] = {k: np.stack([f[k] for f in self._buffer]) for k in self.data_keys
                                          if k in self.user_features}
        columns["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)[:, None]
        columns["frame_index"] = np.arange(n, dtype=np.int64)[:, None]
        columns["episode_index"] = np.full((n, 1), episode_index, dtype=np.int64)
        columns["index"] = np.arange(self.total_frames, self.total_frames + n, dtype=np.int64)[:, None]
        columns["task_index"] = np.full((n, 1), task_index, dtype=np.int64)
        for key in self.data_keys:
            columns[key] = columns[key].reshape(n, *self.features[key]["shape"])

        c, f = self._next_data_file
        episode = fmt.episode_record(episode_index=episode_index, task=task, length=n, chunk_index=c,
                                     file_index=f, from_index=self.total_frames)
        stats = {key: numeric_stats(columns[key]) for key in self.data_keys}
        # 1. videos: close (writes the index), move into place (not referenced by metadata yet)
        video_files: dict[str, tuple[int, int]] = {}
        new_digests: dict[str, dict[str, Any]] = {}
        for key in self.video_keys:
            video = self._videos.pop(key, None)
            if video is None or video.num_frames != n:
                raise RuntimeError(f"internal: video {key!r} has {0 if video is None else video.num_frames} frames, episode {n}")
            video.close()
            vc, vf = self._next_video_file[key]
            dst = self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=vc, file_index=vf)
            dst.parent.mkdir(parents=True, exist_ok=True)
            _fsync_file(video.path)
            os.replace(video.path, dst)
            fsync_dir(dst.parent)
            new_digests[dst.relative_to(self.root).as_posix()] = file_digest(dst)
            video_files[key] = (vc, vf)
            episode.update({f"videos/{key}/chunk_index": vc, f"videos/{key}/file_index": vf,
                            f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": n / self.fps})
            s = image_stats(np.stack(self._stat_frames.get(key, [])))
            s["count"] = np.array([n])
            stats[key] = s
        # 2. data parquet (not referenced yet)
        schema = self._schema()
        arrays = [_to_arrow(columns[k], schema.field(k).type) for k in self.data_keys]
        data_path = self.root / fmt.DATA_PATH.format(chunk_index=c, file_index=f)
        write_parquet_atomic(pa.Table.from_arrays(arrays, schema=schema), data_path)
        new_digests[data_path.relative_to(self.root).as_posix()] = file_digest(data_path)
        episode["meta/episodes/chunk_index"] = 0
        episode["meta/episodes/file_index"] = 0
        for key, s in stats.items():
            for name in fmt.STAT_NAMES:
                episode[f"stats/{key}/{name}"] = np.asarray(s[name]).tolist()
        # 3. commit: the new metadata replaces the old in one atomic step
        tasks = dict(self.tasks)
        tasks[task] = task_index
        digests = {**self._file_digests, **new_digests}
        recording = {"seeds": [*self._recording["seeds"], seed],
                     "next_seed": self._recording["next_seed"] if seed is None else seed + 1}
        self._commit(self.episodes + [episode], tasks, self.total_frames + n, digests, recording)
        self.episodes.append(episode)
        self.tasks = tasks
        self._file_digests = digests
        self._recording = recording
        self.total_frames += n
        self._next_data_file = self._next_file(c, f)
        for key, (vc, vf) in video_files.items():
            self._next_video_file[key] = self._next_file(vc, vf)
        self.discard_episode()  # resets buffers and staging
        return episode_index

    def _remove_uncommitted_first_episode(self) -> None:
        """A crash during the very first save leaves data/ and videos/ files but no meta/: no episode was
        committed, so they are the episode in progress's leftovers, removed as on any resume."""
        entries = {p.name for p in self.root.iterdir()}
        if not entries - {STAGING_DIR} or not entries <= {"data", "videos", STAGING_DIR}:
            return
        for name in entries - {STAGING_DIR}:
            shutil.rmtree(self.root / name)
        log.warning("%s: removed the files of a first episode whose save never committed", self.root)

    def _schema(self) -> pa.Schema:
        fields = [pa.field(k, fmt.arrow_type(self.features[k])) for k in self.data_keys]
        hf = {"info": {"features": {k: fmt.hf_feature(self.features[k]) for k in self.data_keys}}}
        return pa.schema(fields, metadata={"huggingface": json.dumps(hf)})

    # ---- metadata commit ---------------------------------------------------------------------
    def _commit(self, episodes: list[dict[str, Any]], tasks: dict[str, int], total_frames: int,
                digests: dict[str, dict[str, Any]], recording: dict[str, Any]) -> None:
        nxt = self.staging / "meta-next"
        shutil.rmtree(nxt, ignore_errors=True)
        nxt.mkdir(parents=True)
        rows = [dict(e) for e in episodes]
        for r in rows:
            r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = 0, 0
        columns = {k: [r.get(k) for r in rows] for k in rows[-1]}
        write_parquet_atomic(pa.table({k: pa.array(v) for k, v in columns.items()}),
                             nxt / "episodes" / "chunk-000" / "file-000.parquet")
        write_parquet_atomic(tasks_table(tasks), nxt / "tasks.parquet")
        stats = {}
        for key in self.data_keys + self.video_keys:  # (datasets converted from v2.1 have no quantiles)
            per_episode = [{name: np.asarray(r[f"stats/{key}/{name}"]) for name in fmt.STAT_NAMES
                            if r.get(f"stats/{key}/{name}") is not None} for r in rows]
            stats[key] = aggregate_stats(per_episode)
        atomic_write_text(nxt / "stats.json", json.dumps(to_jsonable(stats), indent=2))
        atomic_write_text(nxt / "info.json", json.dumps(self._info(len(rows), total_frames, len(tasks)), indent=2))
        atomic_write_text(nxt / Path(RECORDING_PATH).name, json.dumps(recording, indent=1))
        meta_digests = {f"meta/{p.relative_to(nxt).as_posix()}": file_digest(p) for p in sorted(nxt.rglob("*"))
                        if p.is_file() and not p.name.startswith(".")}
        atomic_write_text(nxt / Path(fmt.CHECKSUMS_PATH).name, checksums_document({**digests, **meta_digests}))
        fsync_dir(nxt)
        meta = self.root / "meta"
        previous = None
        if not meta.exists():
            os.replace(nxt, meta)
        elif exchange_dirs(nxt, meta):
            previous = nxt  # now holds the previous metadata
        else:  # no atomic exchange here: two renames, repaired on open if cut in half
            previous = self.staging / "meta-old"
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(meta, previous)
            os.replace(nxt, meta)
        # Committed: the episode is in the dataset. Failing to tidy up must not report the save as failed
        # (the caller would record the next episode over this one's index and files).
        try:
            if previous is not None:
                shutil.rmtree(previous)
            fsync_dir(self.root)
        except OSError as e:
            log.warning("%s: episode committed, but cleaning up after it failed: %s", self.root, e)

    def _info(self, total_episodes: int, total_frames: int, total_tasks: int) -> dict[str, Any]:
        extra = dict(self._info_extra)
        return fmt.build_info(
            features=self.features, fps=self.fps, robot_type=self.robot_type, video_codec=self.video_codec,
            total_episodes=total_episodes, total_frames=total_frames, total_tasks=total_tasks,
            chunks_size=self.chunks_size,
            data_files_size_in_mb=extra.pop("data_files_size_in_mb", fmt.DEFAULT_DATA_FILE_SIZE_MB),
            video_files_size_in_mb=extra.pop("video_files_size_in_mb", fmt.DEFAULT_VIDEO_FILE_SIZE_MB),
            extra=extra,
        )

    # ---- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Discard the unsaved episode in progress, if any; saved episodes are already on disk."""
        if self._closed:
            return
        self.discard_episode()
        self._closed = True

    def __enter__(self) -> DatasetRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DatasetRecorder", "exchange_dirs"]
