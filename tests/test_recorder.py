"""Crash-safe recorder: durability per episode, SIGKILL mid-episode, resume, discard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data import recorder as recorder_mod
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.recorder import DatasetRecorder
from robopolicy.data.verify import verify_dataset

H = W = 32
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": [2], "names": None},
    "observation.images.cam": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
}


def frame(ep: int, i: int) -> dict:
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 0] = (40 * ep) % 256
    img[:, :, 1] = (8 * i) % 256
    return {"observation.state": np.array([ep, i, ep * 100 + i], np.float32),
            "action": np.array([i, -ep], np.float32), "observation.images.cam": img}


def check_episode(ds: LeRobotDataset, e: int, ep_id: int, length: int) -> None:
    lo, hi = ds.episode_bounds[e]
    assert hi - lo == length
    state = ds.column("observation.state")[lo:hi]
    np.testing.assert_array_equal(state[:, 0], ep_id)
    np.testing.assert_array_equal(state[:, 1], np.arange(length))
    frames = ds.video_frames("observation.images.cam", e)
    assert frames.shape == (length, H, W, 3)
    assert abs(float(frames[:, :, :, 0].mean()) - (40 * ep_id) % 256) < 4
    np.testing.assert_allclose(frames[:, 0, 0, 1].astype(float), (8 * np.arange(length)) % 256, atol=4)


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_recorder import FEATURES, frame
    from robopolicy.data.recorder import DatasetRecorder
    rec = DatasetRecorder({root!r}, fps=10, features=FEATURES, robot_type="test")
    for ep in range(2):
        for i in range(12 + ep):
            rec.add_frame({{**frame(ep, i), "task": "pick"}})
        rec.save_episode()
        print("saved", ep, flush=True)
    for i in range(30):
        rec.add_frame({{**frame(2, i), "task": "pick"}})
        if i == 5:
            print("mid", flush=True)
        time.sleep(0.02)
    time.sleep(60)
""")


def test_sigkill_mid_episode_then_resume_and_discard(tmp_path: Path):
    root = tmp_path / "ds"
    script = SCRIPT.format(tests=str(Path(__file__).parent), root=str(root))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.strip() == "mid":
                break
        assert lines == ["saved 0", "saved 1", "mid"], (lines, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the episode in progress was being staged; the dataset holds the two saved ones
    assert (root / ".recorder").exists()
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 25
    assert verify_dataset(root).ok  # the checksums were committed with each episode, nothing else
    check_episode(ds, 0, 0, 12)
    check_episode(ds, 1, 1, 13)
    assert ds.tasks == {0: "pick"}

    # resume: append one episode, discard another, append a third with a new task
    with DatasetRecorder(root, fps=10, features=FEATURES) as rec:
        assert not (root / ".recorder").exists()
        assert rec.num_episodes == 2
        for i in range(7):
            rec.add_frame(frame(5, i))
        assert rec.save_episode(task="pick") == 2
        for i in range(9):
            rec.add_frame(frame(6, i))
        rec.discard_episode()
        assert rec.episode_frames == 0
        for i in range(4):
            rec.add_frame(frame(7, i))
        assert rec.save_episode(task="place") == 3
        for i in range(3):  # left unsaved at close: dropped
            rec.add_frame(frame(8, i))
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 4 and ds.num_frames == 12 + 13 + 7 + 4
    check_episode(ds, 2, 5, 7)
    check_episode(ds, 3, 7, 4)
    np.testing.assert_array_equal(ds.column("index").reshape(-1), np.arange(36))
    assert ds.tasks == {0: "pick", 1: "place"}
    assert ds.column("task_index")[-1, 0] == 1
    assert ds.stats["observation.state"]["count"][0] == 36
    np.testing.assert_allclose(ds.stats["observation.state"]["max"], ds.column("observation.state").max(0))
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], ds.column("observation.state").mean(0), rtol=1e-5)
    assert ds.stats["observation.images.cam"]["mean"].shape == (3, 1, 1)
    assert ds.info["splits"] == {"train": "0:4"}
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert "data/chunk-000/file-003.parquet" in files and "videos/observation.images.cam/chunk-000/file-003.mp4" in files
    assert not any("file-004" in f for f in files)
    assert verify_dataset(root).ok


def test_each_saved_episode_is_on_disk_before_the_next(tmp_path: Path):
    feats = {k: v for k, v in FEATURES.items() if v["dtype"] != "video"}
    rec = DatasetRecorder(tmp_path / "d", fps=5, features=feats)
    for ep in range(3):
        for i in range(5):
            rec.add_frame({k: v for k, v in frame(ep, i).items() if k in feats})
        rec.save_episode(task="t")
        ds = LeRobotDataset(tmp_path / "d")  # readable after every episode, without close()
        assert ds.num_episodes == ep + 1
    # never closed: like a crash between episodes


def test_crash_during_commit_keeps_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    feats = {k: v for k, v in FEATURES.items()}
    rec = DatasetRecorder(tmp_path / "d", fps=10, features=feats)
    for i in range(6):
        rec.add_frame(frame(0, i))
    rec.save_episode(task="t")

    def crash(a, b):
        raise KeyboardInterrupt("simulated crash at the commit point")

    monkeypatch.setattr(recorder_mod, "exchange_dirs", crash)
    for i in range(5):
        rec.add_frame(frame(1, i))
    with pytest.raises(KeyboardInterrupt):
        rec.save_episode(task="t")
    monkeypatch.undo()
    # the new episode's data and video files exist but nothing references them
    assert (tmp_path / "d/data/chunk-000/file-001.parquet").exists()
    ds = LeRobotDataset(tmp_path / "d")
    assert ds.num_episodes == 1
    leftovers = verify_dataset(tmp_path / "d").unlisted  # verify points at the uncommitted files
    assert "data/chunk-000/file-001.parquet" in leftovers
    rec2 = DatasetRecorder(tmp_path / "d")  # resume without restating features
    assert not (tmp_path / "d/data/chunk-000/file-001.parquet").exists()
    assert not (tmp_path / "d/videos/observation.images.cam/chunk-000/file-001.mp4").exists()
    for i in range(3):
        rec2.add_frame(frame(2, i))
    rec2.save_episode(task="t")
    ds = LeRobotDataset(tmp_path / "d")
    assert ds.num_episodes == 2
    check_episode(ds, 1, 2, 3)
    assert verify_dataset(tmp_path / "d").ok


def test_fallback_two_rename_commit_is_repaired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    feats = {"observation.state": FEATURES["observation.state"]}
    monkeypatch.setattr(recorder_mod, "exchange_dirs", lambda a, b: False)
    rec = DatasetRecorder(tmp_path / "d", fps=10, features=feats)
    for ep in range(2):
        for i in range(4):
            rec.add_frame({"observation.state": frame(ep, i)["observation.state"]})
        rec.save_episode(task="t")
    assert LeRobotDataset(tmp_path / "d").num_episodes == 2
    # simulate a crash between the two renames: meta moved away, meta-next not yet in place
    (tmp_path / "d/.recorder").mkdir()
    os.replace(tmp_path / "d/meta", tmp_path / "d/.recorder/meta-next")
    rec2 = DatasetRecorder(tmp_path / "d")
    assert rec2.num_episodes == 2
    assert LeRobotDataset(tmp_path / "d").num_episodes == 2


def test_refuses_mismatched_resume_and_non_dataset_dirs(tmp_path: Path):
    feats = {"observation.state": FEATURES["observation.state"]}
    rec = DatasetRecorder(tmp_path / "d", fps=10, features=feats)
    rec.add_frame({"observation.state": np.zeros(3, np.float32)})
    rec.save_episode(task="t")
    with pytest.raises(ValueError, match="features differ"):
        DatasetRecorder(tmp_path / "d", fps=10, features={"x": {"dtype": "float32", "shape": [1]}})
    with pytest.raises(ValueError, match="fps"):
        DatasetRecorder(tmp_path / "d", fps=30, features=feats)
    with pytest.raises(FileExistsError):
        DatasetRecorder(tmp_path / "d", fps=10, features=feats, resume=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other/file.txt").write_text("x")
    with pytest.raises(FileExistsError):
        DatasetRecorder(tmp_path / "other", fps=10, features=feats)
    rec3 = DatasetRecorder(tmp_path / "d", fps=10, features=feats, overwrite=True)
    assert rec3.num_episodes == 0
    with pytest.raises(ValueError, match="no frames"):
        rec3.save_episode(task="t")
    with pytest.raises(ValueError, match="shape"):
        rec3.add_frame({"observation.state": np.zeros(4, np.float32)})


def test_resume_dataset_written_by_packed_writer(tmp_path: Path):
    from robopolicy.data.writer import LeRobotDatasetWriter

    feats = {k: v for k, v in FEATURES.items()}
    with LeRobotDatasetWriter(tmp_path / "d", fps=10, features=feats) as w:
        for ep in range(2):
            w.add_episode({k: np.stack([frame(ep, i)[k] for i in range(5)]) for k in feats}, task="t")
    rec = DatasetRecorder(tmp_path / "d", fps=10, features=feats)
    for i in range(6):
        rec.add_frame(frame(3, i))
    rec.save_episode(task="t")
    ds = LeRobotDataset(tmp_path / "d")
    assert ds.num_episodes == 3
    check_episode(ds, 0, 0, 5)
    check_episode(ds, 1, 1, 5)
    check_episode(ds, 2, 3, 6)
    assert (tmp_path / "d/data/chunk-000/file-001.parquet").exists()  # appended after the packed file-000
