"""The dataset layer under faults: failed appends and saves never leave stray rows or lose saved episodes,
crashed first saves and converted datasets reopen, v2.1 statistics come from where LeRobot takes them, and
malformed metadata gets errors naming the file and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from robopolicy.data import recorder as recorder_module
from robopolicy.data import writer as writer_module
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.recorder import DatasetRecorder
from robopolicy.data.writer import LeRobotDatasetWriter
from tests.conftest import LOWDIM_FEATURES, linear_mapping_episodes, write_dataset
from tests.test_dataset import CAMERA_FEATURES, _write_v21, camera_episodes


def _record(recorder: DatasetRecorder, value: float, n: int) -> None:
    for _ in range(n):
        recorder.add_frame({"observation.state": np.full(2, value, np.float32), "action": np.zeros(2, np.float32)})


def test_writer_failed_video_append_leaves_no_rows(tmp_path, monkeypatch):
    """An episode whose video append fails is not in the dataset, and nothing of it is: the next episode
    takes its index and the frame indices stay contiguous."""
    append = writer_module.VideoAppender.append
    calls = {"n": 0}

    def failing_second_append(self, frames):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("encoder died")
        return append(self, frames)

    monkeypatch.setattr(writer_module.VideoAppender, "append", failing_second_append)
    episodes = camera_episodes(lengths=(5, 6, 7))
    root = tmp_path / "ds"
    with LeRobotDatasetWriter(root, fps=10, features=CAMERA_FEATURES) as w:
        assert w.add_episode(episodes[0], "t") == 0
        with pytest.raises(OSError, match="encoder died"):
            w.add_episode(episodes[1], "t")
        assert w.add_episode(episodes[2], "t") == 1
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 2 and len(ds) == 12
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert table.column("index").to_pylist() == list(range(12))
    assert table.column("episode_index").to_pylist() == [0] * 5 + [1] * 7
    np.testing.assert_array_equal(ds.column("observation.state")[5:], episodes[2]["observation.state"])


def test_recorder_cleanup_failure_after_commit_keeps_the_episode(tmp_path, monkeypatch):
    """Once the metadata swap commits an episode, a failing clean-up must not report the save as failed:
    the recorder would reuse the index and files and overwrite it."""
    root = tmp_path / "rec"
    recorder = DatasetRecorder(root, fps=10, features=LOWDIM_FEATURES)
    _record(recorder, 0.0, 4)
    recorder.save_episode(task="t")
    fsync_dir = recorder_module.fsync_dir
    failed = []

    def failing_once(directory):
        if Path(directory) == root and not failed:
            failed.append(directory)
            raise OSError(5, "EIO")
        return fsync_dir(directory)

    monkeypatch.setattr(recorder_module, "fsync_dir", failing_once)
    _record(recorder, 1.0, 5)
    assert recorder.save_episode(task="t") == 1 and failed
    _record(recorder, 2.0, 6)
    assert recorder.save_episode(task="t") == 2
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3
    np.testing.assert_array_equal(np.unique(ds.column("observation.state")[:, 0]), [0.0, 1.0, 2.0])


def test_a_failed_save_keeps_the_episode_buffered_and_says_so(tmp_path, monkeypatch):
    root = tmp_path / "rec"
    recorder = DatasetRecorder(root, fps=10, features=LOWDIM_FEATURES)
    _record(recorder, 1.0, 3)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder_module, "write_parquet_atomic", disk_full)
    with pytest.raises(OSError) as e:
        recorder.save_episode(task="t")
    assert any("still buffered" in note for note in e.value.__notes__)
    monkeypatch.undo()
    assert recorder.save_episode(task="t") == 0  # the retry saves the same 3 frames
    assert len(LeRobotDataset(root)) == 3


def test_recorder_reopens_after_a_crash_in_its_first_save(tmp_path, monkeypatch):
    """A kill during the very first save leaves data/videos files but no meta/: reopening removes them (as
    any resume removes a crashed episode's leftovers) and records normally."""
    root = tmp_path / "rec"
    recorder = DatasetRecorder(root, fps=10, features=LOWDIM_FEATURES)
    _record(recorder, 1.0, 3)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("kill -9")

    monkeypatch.setattr(DatasetRecorder, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        recorder.save_episode(task="t")
    monkeypatch.undo()
    assert (root / "data").is_dir() and not (root / "meta").exists()
    reopened = DatasetRecorder(root, fps=10, features=LOWDIM_FEATURES)
    _record(reopened, 2.0, 4)
    assert reopened.save_episode(task="t") == 0
    np.testing.assert_array_equal(LeRobotDataset(root).column("observation.state")[:, 0], [2.0] * 4)
    (root / "notes.txt").write_text("mine")  # anything else in the directory is still refused
    shutil.rmtree(root / "meta")
    with pytest.raises(FileExistsError, match="not empty and holds no dataset"):
        DatasetRecorder(root, fps=10, features=LOWDIM_FEATURES)


def test_recorder_resumes_a_dataset_without_quantile_stats(tmp_path):
    """LeRobot's v2.1 -> v3.0 converter writes per-episode stats without quantiles."""
    root = write_dataset(tmp_path / "ds", linear_mapping_episodes(n_episodes=2, length=5))
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([c for c in table.column_names if c.rsplit("/", 1)[-1].startswith("q")]), path)
    recorder = DatasetRecorder(root)
    _record(recorder, 0.5, 4)
    assert recorder.save_episode(task="t") == 2
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and "q01" not in ds.stats["observation.state"]


def test_v21_statistics_come_from_the_per_episode_stats(tmp_path):
    """As in LeRobot, a v2.1 dataset's statistics aggregate meta/episodes_stats.jsonl; a leftover stats.json
    (written by older versions) is ignored."""
    root = tmp_path / "v21"
    episodes = camera_episodes(lengths=(6, 9))
    _write_v21(root, episodes)
    expected = np.concatenate([e["action"] for e in episodes]).mean(axis=0)
    np.testing.assert_allclose(LeRobotDataset(root).stats["action"]["mean"], expected, rtol=1e-5)
    (root / "meta/stats.json").write_text(json.dumps({"action": {"mean": [0.0, 0.0], "std": [1.0, 1.0],
                                                                 "min": [-9, -9], "max": [9, 9]}}))
    np.testing.assert_allclose(LeRobotDataset(root).stats["action"]["mean"], expected, rtol=1e-5)


def _edit_episodes(root: Path, drop: str) -> None:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns([drop]), path)


def _edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("edit,message", [
    (lambda root: _edit_episodes(root, "dataset_from_index"), "meta/episodes: field 'dataset_from_index' is missing"),
    (lambda root: _edit_info(root, fps="ten"), "meta/info.json: field 'fps' must be a positive integer, got 'ten'"),
    (lambda root: _edit_info(root, fps=0), "meta/info.json: field 'fps' must be a positive integer"),
    (lambda root: _edit_info(root, video_path=None), "meta/info.json: field 'video_path' must be a path template"),
])
def test_malformed_metadata_errors_name_the_file_and_field(tmp_path, edit, message):
    root = write_dataset(tmp_path / "cam", camera_episodes(lengths=(3, 4)), features=CAMERA_FEATURES)
    edit(root)
    with pytest.raises(DatasetError, match=message):
        LeRobotDataset(root)


def test_image_features_are_refused_by_the_recorder(tmp_path):
    """The crash-safe recorder streams cameras to video only; the batch writer stores images too
    (tests/test_dataset_lerobot.py)."""
    features = {**LOWDIM_FEATURES, "observation.images.top": {"dtype": "image", "shape": [8, 8, 3], "names": None}}
    with pytest.raises(DatasetError, match=r"have dtype 'image' .* declare cameras with dtype 'video'"):
        DatasetRecorder(tmp_path / "r", fps=10, features=features)
