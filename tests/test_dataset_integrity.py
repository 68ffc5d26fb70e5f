"""Corruption that used to load silently: checksums, statistics, non-finite values, fps and timestamps, and the
recorder's seed sequence across sessions (the fuzzer's dataset findings, issue 27 item 5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robopolicy.cli import main
from robopolicy.data import format as fmt
from robopolicy.data.checksums import read_checksums
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.recorder import DatasetRecorder
from robopolicy.data.verify import verify_dataset
from robopolicy.data.writer import LeRobotDatasetWriter
from robopolicy.teleop import ScriptedDevice, TeleopCommand
from robopolicy.teleop.base import ArmPose
from robopolicy.teleop.record import record_teleop
from tests.conftest import LOWDIM_FEATURES, write_dataset
from tests.test_dataset import CAMERA_FEATURES, camera_episodes

REPO = Path(__file__).resolve().parents[1]
DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/observation.image/chunk-000/file-000.mp4"


@pytest.fixture
def cam(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "cam", camera_episodes(), features=CAMERA_FEATURES)


def _rewrite_parquet(path: Path, column: str, row: int, value: list[float]) -> None:
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.column_names.index(column)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    pq.write_table(table, path)


def _flip_bits_until_parquet_still_reads(path: Path) -> None:
    """A bit flip somewhere in the values that leaves a readable file with different numbers (the fuzzer's case)."""
    original = path.read_bytes()
    before = pq.read_table(path).to_pydict()
    for offset in range(4, len(original)):
        data = bytearray(original)
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            after = pq.read_table(path).to_pydict()
        except Exception:  # noqa: BLE001 - this flip broke the file's structure: try the next byte
            continue
        changed = {k for k in before if after.get(k) != before[k]}
        same_rows = all(len(after[k]) == len(before[k]) for k in before)
        if changed and changed <= {"observation.state", "action"} and same_rows and all(
                np.isfinite(np.asarray(after[k], dtype=np.float64)).all() for k in changed):
            return
    raise AssertionError("no silent bit flip found")


# ---- checksums -------------------------------------------------------------------------------------------------


def test_writer_lists_every_file_and_a_bit_flip_in_data_fails_the_load(cam: Path):
    listed = read_checksums(cam)
    assert set(listed) == {fmt.INFO_PATH, fmt.STATS_PATH, fmt.TASKS_PATH, "meta/episodes/chunk-000/file-000.parquet",
                           DATA, VIDEO}
    LeRobotDataset(cam)
    _flip_bits_until_parquet_still_reads(cam / DATA)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: sha256 differs from .*meta/checksums\.json"):
        LeRobotDataset(cam)


def test_a_damaged_video_fails_its_first_decode_and_verify(cam: Path):
    path = cam / VIDEO
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    ds = LeRobotDataset(cam)  # same size: the load's cheap check passes ...
    with pytest.raises(DatasetError, match=r"file-000\.mp4: sha256 differs"):
        ds.video_frames("observation.image", 0)  # ... the first decode hashes the file
    with pytest.raises(DatasetError, match=r"file-000\.mp4: sha256 differs"):
        ds[3]
    report = verify_dataset(cam)
    assert not report.ok and any("file-000.mp4: sha256 differs" in p for p in report.problems)


def test_truncated_or_extra_files_are_named(cam: Path):
    path = cam / VIDEO
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"file-000\.mp4: \d+ bytes, .*checksums\.json lists \d+"):
        LeRobotDataset(cam)
    report = verify_dataset(cam, decode_videos=False)
    assert any("file-000.mp4" in p for p in report.problems)


def test_verify_cli_and_a_lerobot_dataset_without_checksums(cam: Path, caplog, capsys):
    assert main(["dataset", "action=verify", f"root={cam}"]) == 0
    (cam / "notes.txt").write_text("added later")
    with pytest.raises(SystemExit):
        main(["dataset", "action=verify", f"root={cam}", "decode_videos=false"])
    assert "not in the checksums: notes.txt" in capsys.readouterr().out
    (cam / "notes.txt").unlink()
    (cam / fmt.CHECKSUMS_PATH).unlink()  # as LeRobot writes it
    with caplog.at_level(logging.INFO, logger="robopolicy.data.reader"):
        LeRobotDataset(cam)  # loads, with a note saying how to add checksums
    assert "no checksums" in caplog.text and "write=true" in caplog.text
    assert not verify_dataset(cam).ok
    assert main(["dataset", "action=verify", f"root={cam}", "write=true"]) == 0
    assert read_checksums(cam) is not None and verify_dataset(cam).ok


def test_the_bundled_dataset_carries_checksums_that_match():
    root = REPO / "datasets/pusht/lerobot"
    report = verify_dataset(root, decode_videos=False)
    assert report.has_checksums and report.ok, report.problems


# ---- statistics and values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["action"].__setitem__("min", [float("nan"), 0.0]), r"field 'action\.min' is not finite"),
    (lambda s: s["action"].__setitem__("std", [1.0, 2.0, 3.0]), r"field 'action\.std' has shape \[3\], the feature's is \[2\]"),
    (lambda s: s["action"].__setitem__("mean", "zero"), r"field 'action\.mean' must be numbers"),
    (lambda s: s["action"].__setitem__("min", [5.0, 5.0]), r"field 'action\.min' exceeds 'action\.max'"),
    (lambda s: s["action"].__setitem__("std", [-1.0, 1.0]), r"field 'action\.std' is negative"),
    (lambda s: s["observation.state"].__setitem__("mean", [99.0, 0.0]), r"field 'observation\.state\.mean' lies outside"),
])
def test_bad_statistics_are_refused_naming_the_field(lowdim_dataset: Path, edit, message):
    path = lowdim_dataset / fmt.STATS_PATH
    stats = json.loads(path.read_text())
    edit(stats)
    path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"meta/stats\.json: " + message):
        LeRobotDataset(lowdim_dataset)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_actions_are_refused_on_load_and_write(lowdim_dataset: Path, tmp_path: Path, bad):
    _rewrite_parquet(lowdim_dataset / DATA, "action", 17, [0.5, bad])
    (lowdim_dataset / fmt.CHECKSUMS_PATH).unlink()  # the value itself must be caught, not just the altered file
    with pytest.raises(DatasetError, match=r"file-000\.parquet: column 'action' has a non-finite value .* row 17"):
        LeRobotDataset(lowdim_dataset)
    action = np.zeros((5, 2), np.float32)
    action[3, 1] = bad
    with LeRobotDatasetWriter(tmp_path / "w", fps=10, features=LOWDIM_FEATURES) as writer:
        with pytest.raises(ValueError, match=r"feature 'action': non-finite value .* in frame 3"):
            writer.add_episode({"observation.state": np.zeros((5, 2), np.float32), "action": action}, task="t")
        writer.add_episode({"observation.state": np.zeros((5, 2), np.float32), "action": np.zeros((5, 2))}, task="t")
    with DatasetRecorder(tmp_path / "r", fps=10, features=LOWDIM_FEATURES) as rec:
        with pytest.raises(ValueError, match=r"feature 'action': non-finite value"):
            rec.add_frame({"observation.state": np.zeros(2), "action": np.array([bad, 0.0])})
        assert rec.episode_frames == 0


# ---- fps and timestamps ----------------------------------------------------------------------------------------


def _edit_info(root: Path, **fields) -> None:
    info = json.loads((root / fmt.INFO_PATH).read_text())
    info.update(fields)
    (root / fmt.INFO_PATH).write_text(json.dumps(info))


def test_a_wrong_declared_fps_is_caught_by_the_timestamps(lowdim_dataset: Path):
    _edit_info(lowdim_dataset, fps=20)
    with pytest.raises(DatasetError, match=r"column 'timestamp' is 0\.100000 s at frame 1 .* fps=20"):
        LeRobotDataset(lowdim_dataset)


def test_shifted_timestamps_are_refused(lowdim_dataset: Path):
    table = pq.read_table(lowdim_dataset / DATA)
    ts = np.asarray(table.column("timestamp").to_pylist(), np.float32) + np.float32(0.1)
    i = table.column_names.index("timestamp")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(ts)), lowdim_dataset / DATA)
    with pytest.raises(DatasetError, match=r"column 'timestamp' is 0\.100000 s at frame 0 \(episode 0, frame_index 0\)"):
        LeRobotDataset(lowdim_dataset, check_checksums=False)


def test_shifted_video_start_times_are_refused(cam: Path):
    path = cam / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = "videos/observation.image/from_timestamp"
    starts = table.column(column).to_pylist()
    starts[1] += 0.1
    i = table.column_names.index(column)
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(starts)), path)
    with pytest.raises(DatasetError, match=r"episode 1: field 'videos/observation\.image/from_timestamp' is 0\.8 s, "
                                           r"expected 0\.7 s"):
        LeRobotDataset(cam, check_checksums=False)


# ---- the recorder ----------------------------------------------------------------------------------------------


class SeededPointEnv:
    """A point that starts where the seed puts it: episodes recorded with equal seeds are identical."""

    fps = 10

    def __init__(self):
        self.p = np.zeros(3)
        self.t = 0

    def features(self):
        return {"observation.state": {"dtype": "float32", "shape": [3], "names": None},
                "action": {"dtype": "float32", "shape": [4], "names": None}}

    def reset(self, seed=None):
        self.p = np.random.default_rng(seed).uniform(-1, 1, 3)
        self.t = 0
        return {"observation.state": self.p.astype(np.float32)}, {"is_success": False}

    def ee_pose(self):
        return ArmPose(self.p.copy(), np.array([0, 0, 0, 1.0]))

    def teleop_action(self, cmd):
        return np.r_[cmd.delta_pos, 1.0]

    def step(self, a):
        self.p = self.p + a[:3]
        self.t += 1
        return {"observation.state": self.p.astype(np.float32)}, 0.0, False, self.t >= 5, {"is_success": False}


def _session(root: Path, seed: int, n: int) -> list[int | None]:
    env = SeededPointEnv()
    with DatasetRecorder(root, fps=10, features=env.features()) as rec:
        summary = record_teleop(env, ScriptedDevice([TeleopCommand(delta_pos=[0.01, 0, 0])] * 100), rec, task="t",
                                num_episodes=n, keep_failures=True, seed=seed)
        assert len(summary.saved) == n
        return rec.episode_seeds


def test_a_resumed_recording_continues_the_seed_sequence(tmp_path: Path):
    root = tmp_path / "rec"
    assert _session(root, seed=0, n=2) == [0, 1]
    assert _session(root, seed=0, n=2) == [0, 1, 2, 3]  # the same command line again: new episodes, not replays
    ds = LeRobotDataset(root)
    starts = ds.column("observation.state")[ds.episode_bounds[:, 0]]
    assert len({tuple(s) for s in starts.tolist()}) == 4
    np.testing.assert_allclose(starts[2], np.random.default_rng(2).uniform(-1, 1, 3).astype(np.float32))
    assert verify_dataset(root).ok  # the recorder keeps the checksums current, commit by commit


def test_recorder_checksums_cover_a_resumed_lerobot_dataset(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", [{"observation.state": np.zeros((4, 3), np.float32),
                                            "action": np.ones((4, 4), np.float32)}],
                         features=SeededPointEnv().features())
    (root / fmt.CHECKSUMS_PATH).unlink()
    assert _session(root, seed=5, n=1) == [None, 5]
    listed = read_checksums(root)
    assert DATA in listed and "data/chunk-000/file-001.parquet" in listed
    assert verify_dataset(root).ok
