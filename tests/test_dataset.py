"""LeRobot v3.0 round trips, v2.1 reading, zarr import, and the errors bad datasets raise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robopolicy.data import format as fmt
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.video import VideoAppender
from tests.conftest import SHARED_PUSHT_ZARR, write_dataset

CAMERA_FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": None},
    "action": {"dtype": "float32", "shape": [2], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
    "observation.image": {"dtype": "video", "shape": [32, 48, 3], "names": ["height", "width", "channels"]},
}


def camera_episodes(lengths=(7, 12, 5), seed=0):
    """Frames with distinct flat colours, so a decoded frame can be matched to its source exactly."""
    rng = np.random.default_rng(seed)
    episodes, k = [], 0
    for n in lengths:
        colours = np.array([[(37 * (k + i)) % 256, (91 * (k + i)) % 256, (173 * (k + i)) % 256] for i in range(n)])
        k += n
        episodes.append({
            "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "next.done": np.arange(n) == n - 1,
            "observation.image": np.broadcast_to(colours[:, None, None, :], (n, 32, 48, 3)).astype(np.uint8).copy(),
        })
    return episodes


@pytest.fixture
def camera_dataset(tmp_path):
    episodes = camera_episodes()
    return write_dataset(tmp_path / "cam", episodes, features=CAMERA_FEATURES), episodes


def test_round_trip_frames_stats_and_boundaries(camera_dataset):
    root, episodes = camera_dataset
    ds = LeRobotDataset(root)
    assert ds.version == "v3.0" and ds.num_episodes == 3 and ds.num_frames == 24
    np.testing.assert_array_equal(ds.episode_bounds, [[0, 7], [7, 19], [19, 24]])
    for key in ("observation.state", "action", "next.done"):
        np.testing.assert_array_equal(ds.column(key).reshape(24, -1), np.concatenate([e[key] for e in episodes]).reshape(24, -1))
    np.testing.assert_array_equal(ds.column("frame_index").ravel(), np.concatenate([np.arange(n) for n in (7, 12, 5)]))
    np.testing.assert_allclose(ds.column("timestamp").ravel(), np.concatenate([np.arange(n) / 10 for n in (7, 12, 5)]), atol=1e-6)
    assert ds.tasks == {0: "task 0", 1: "task 1"}
    # Global stats equal the statistics of the concatenated data.
    state = np.concatenate([e["observation.state"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], state.std(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["observation.state"]["q50"], np.quantile(state, 0.5, axis=0), rtol=1e-6)
    assert ds.stats["observation.image"]["mean"].shape == (3, 1, 1)
    for name in fmt.STAT_NAMES:
        assert name in ds.stats["action"]
    # Video: each decoded frame is its own source frame (frame-exact), within codec loss.
    decoded = ds.video_frames("observation.image")
    source = np.concatenate([e["observation.image"] for e in episodes]).astype(int)
    colours = source[:, 0, 0, :]
    nearest = np.argmin(np.abs(decoded[:, 16, 24, None, :].astype(int) - colours[None]).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, np.arange(24))
    assert np.abs(decoded.astype(int) - source).mean() < 3
    # Random access to one frame of the middle episode.
    frame = ds[10]
    assert int(frame["episode_index"][0]) == 1 and int(frame["frame_index"][0]) == 3
    np.testing.assert_allclose(frame["observation.image"][16, 24], colours[10], atol=6)


def test_layout_matches_lerobot_v30(camera_dataset):
    root, _ = camera_dataset
    info = json.loads((root / "meta/info.json").read_text())
    for field in ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                  "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path", "features"):
        assert field in info, field
    assert info["codebase_version"] == "v3.0" and info["splits"] == {"train": "0:3"}
    assert info["features"]["observation.image"]["info"]["video.height"] == 32
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert name in info["features"]
    assert (root / "data/chunk-000/file-000.parquet").is_file()
    assert (root / "videos/observation.image/chunk-000/file-000.mp4").is_file()
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "videos/observation.image/from_timestamp", "meta/episodes/chunk_index",
                "stats/action/q99"):
        assert col in episodes.column_names, col
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]  # unnamed, as LeRobot
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert pa.types.is_fixed_size_list(data.schema.field("observation.state").type)
    assert data.schema.field("index").type == pa.int64()


def test_data_files_roll_over_and_still_read_back(tmp_path):
    episodes = camera_episodes(lengths=(40, 40, 40))
    root = write_dataset(tmp_path / "roll", episodes, features=CAMERA_FEATURES, data_files_size_in_mb=0.002)
    files = sorted((root / "data/chunk-000").glob("file-*.parquet"))
    assert len(files) >= 2
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e["action"] for e in episodes]))


def _write_v21(root: Path, episodes: list[dict[str, np.ndarray]]) -> None:
    """A v2.1 dataset as LeRobot wrote it: one parquet and one mp4 per episode, JSON-lines metadata."""
    (root / "meta").mkdir(parents=True)
    features = {**{k: v for k, v in CAMERA_FEATURES.items()}, **fmt.DEFAULT_FEATURES}
    index = 0
    episode_lines, stats_lines = [], []
    for e, ep in enumerate(episodes):
        n = len(ep["action"])
        table = pa.table({
            "observation.state": pa.array(ep["observation.state"].tolist(), type=pa.list_(pa.float32())),
            "action": pa.array(ep["action"].tolist(), type=pa.list_(pa.float32())),
            "next.done": pa.array(ep["next.done"]),
            "timestamp": pa.array((np.arange(n) / 10).astype(np.float32)),
            "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, e)),
            "index": pa.array(np.arange(index, index + n)),
            "task_index": pa.array(np.zeros(n, dtype=np.int64)),
        })
        index += n
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        video = VideoAppender(root / f"videos/chunk-000/observation.image/episode_{e:06d}.mp4", 10, 32, 48)
        video.append(ep["observation.image"])
        video.close()
        episode_lines.append({"episode_index": e, "tasks": ["push"], "length": n})
        stats_lines.append({"episode_index": e, "stats": {"action": {
            "min": ep["action"].min(0).tolist(), "max": ep["action"].max(0).tolist(), "mean": ep["action"].mean(0).tolist(),
            "std": ep["action"].std(0).tolist(), "count": [n]}}})
    info = {"codebase_version": "v2.1", "robot_type": "toy", "total_episodes": len(episodes), "total_frames": index,
            "total_tasks": 1, "total_videos": len(episodes), "total_chunks": 1, "chunks_size": 1000, "fps": 10,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/episodes.jsonl").write_text("\n".join(json.dumps(x) for x in episode_lines) + "\n")
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(json.dumps(x) for x in stats_lines) + "\n")
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "push"}) + "\n")


def test_reads_v21(tmp_path):
    episodes = camera_episodes(lengths=(6, 9))
    _write_v21(tmp_path / "v21", episodes)
    ds = LeRobotDataset(tmp_path / "v21")
    assert ds.version == "v2.1" and ds.num_episodes == 2 and ds.num_frames == 15
    np.testing.assert_array_equal(ds.episode_bounds, [[0, 6], [6, 15]])
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e["action"] for e in episodes]))
    assert ds.tasks == {0: "push"}
    all_actions = np.concatenate([e["action"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(ds.stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["action"]["std"], all_actions.std(0), rtol=1e-5)
    frames = ds.video_frames("observation.image", episode_index=1)
    np.testing.assert_allclose(frames[:, 16, 24].astype(int), episodes[1]["observation.image"][:, 16, 24], atol=6)


def _make_synthetic_zarr(path: Path, lengths=(5, 8, 6)) -> tuple[np.ndarray, np.ndarray]:
    import zarr

    rng = np.random.default_rng(0)
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    state = np.column_stack([rng.uniform(100, 400, (n, 4)), rng.uniform(-3, 3, n)]).astype(np.float32)
    action = rng.uniform(50, 450, (n, 2)).astype(np.float32)
    root.create_array("data/state", data=state)
    root.create_array("data/action", data=action)
    root.create_array("meta/episode_ends", data=np.cumsum(lengths).astype(np.int64))
    return state, action


def test_zarr_conversion_counts_and_values(tmp_path):
    from robopolicy.importers.diffusion_policy_zarr import convert_pusht_zarr
    from robopolicy.sim.pusht import pusht_features_from_states

    state, action = _make_synthetic_zarr(tmp_path / "rb.zarr")
    out = convert_pusht_zarr(tmp_path / "rb.zarr", tmp_path / "ds", with_images=False, progress=False)
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 3 and ds.num_frames == 19
    np.testing.assert_array_equal(ds.episode_bounds, [[0, 5], [5, 13], [13, 19]])
    np.testing.assert_array_equal(ds.column("action"), action)
    expected = pusht_features_from_states(state, render_images=False)
    np.testing.assert_array_equal(ds.column("observation.environment_state"), expected["observation.environment_state"])
    np.testing.assert_array_equal(ds.column("observation.state"), state[:, :2])
    done = ds.column("next.done").ravel()
    assert done.sum() == 3 and done[4] and done[12] and done[18]


def test_pusht_mirror_is_the_same_task_reflected_across_the_goals_axis():
    """The mirror image keeps the goal, each step's coverage and the T's keypoints (as a set, reflected), and
    mirroring twice gives the episode back."""
    from robopolicy.importers.diffusion_policy_zarr import mirror_pusht
    from robopolicy.sim.pusht import pusht_features_from_states

    rng = np.random.default_rng(0)
    near_goal = np.array([256.0, 256.0, np.pi / 4]) + rng.normal(0, [20, 20, 0.3], (40, 3))
    states = np.column_stack([rng.uniform(50, 450, (40, 2)), near_goal])
    actions = rng.uniform(0, 512, (40, 2)).astype(np.float32)
    mirrored, mirrored_actions = mirror_pusht(states, actions)
    original, image = (pusht_features_from_states(x, render_images=False) for x in (states, mirrored))
    assert original["coverage"].max() > 0.5  # some states overlap the goal, so coverage is a real check
    np.testing.assert_allclose(image["coverage"], original["coverage"], atol=1e-9)
    keypoints = original["observation.environment_state"].reshape(-1, 8, 2)
    reflected = np.stack([512 - keypoints[..., 1], 512 - keypoints[..., 0]], axis=-1)
    image_keypoints = image["observation.environment_state"].reshape(-1, 8, 2)
    nearest = np.abs(reflected[:, :, None] - image_keypoints[:, None]).sum(-1).min(-1)
    assert nearest.max() < 1e-3
    np.testing.assert_allclose(image["observation.state"], 512 - states[:, 1::-1], atol=1e-4)
    np.testing.assert_allclose(mirrored_actions, 512 - actions[:, ::-1])
    twice, twice_actions = mirror_pusht(mirrored, mirrored_actions)
    np.testing.assert_allclose(twice[:, :4], states[:, :4], atol=1e-9)
    np.testing.assert_allclose(np.cos(twice[:, 4] - states[:, 4]), 1.0, atol=1e-9)
    np.testing.assert_allclose(twice_actions, actions, atol=1e-4)
    goal, _ = mirror_pusht(np.array([[0.0, 0.0, 256.0, 256.0, np.pi / 4]]), actions[:1])
    np.testing.assert_allclose(goal[0, 2:], [256.0, 256.0, np.pi / 4])


def test_zarr_conversion_with_mirror_interleaves_each_episode_and_its_image(tmp_path):
    from robopolicy.importers.diffusion_policy_zarr import convert_pusht_zarr, mirror_pusht

    state, action = _make_synthetic_zarr(tmp_path / "rb.zarr")
    out = convert_pusht_zarr(tmp_path / "rb.zarr", tmp_path / "ds", with_images=False, progress=False, mirror=True)
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 6 and ds.num_frames == 38
    np.testing.assert_array_equal(ds.episode_bounds[:, 1] - ds.episode_bounds[:, 0], [5, 5, 8, 8, 6, 6])
    s, e = ds.episode_bounds[3]
    np.testing.assert_allclose(ds.column("action")[s:e], mirror_pusht(state[5:13], action[5:13])[1])
    rewards = ds.column("next.reward").ravel()
    for original, image in ((0, 1), (2, 3), (4, 5)):
        (a, b), (c, d) = ds.episode_bounds[original], ds.episode_bounds[image]
        np.testing.assert_allclose(rewards[c:d], rewards[a:b], atol=1e-6)
    assert ds.column("next.done").ravel().sum() == 6


def test_convert_cli_refuses_mirror_for_other_sources(tmp_path):
    from omegaconf import OmegaConf

    from robopolicy.cli import cmd_convert

    cfg = OmegaConf.create({"source": "robomimic_hdf5", "mirror": True, "input": str(tmp_path / "x.hdf5"),
                            "output": str(tmp_path / "o")})
    with pytest.raises(ValueError, match="mirror=true is a PushT augmentation"):
        cmd_convert(cfg)


@pytest.mark.skipif(not SHARED_PUSHT_ZARR.exists(), reason=f"PushT demos not found at {SHARED_PUSHT_ZARR}")
def test_real_pusht_conversion_counts(tmp_path):
    import zarr

    from robopolicy.importers.diffusion_policy_zarr import convert_pusht_zarr

    ends = zarr.open_group(str(SHARED_PUSHT_ZARR), mode="r")["meta/episode_ends"][:4]
    out = convert_pusht_zarr(SHARED_PUSHT_ZARR, tmp_path / "pusht", max_episodes=4, progress=False)
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 4 and ds.num_frames == int(ends[-1])
    np.testing.assert_array_equal(ds.episode_bounds[:, 1], ends)
    assert ds.video_frames("observation.image", 3).shape == (int(ends[3] - ends[2]), 96, 96, 3)


def test_bundled_dataset_is_the_full_human_demo_set():
    root = Path(__file__).resolve().parents[1] / "datasets/pusht/lerobot"
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 206 and ds.num_frames == 25650
    assert set(ds.features) >= {"observation.state", "observation.environment_state", "action", "observation.image"}


def test_bundled_mirror_dataset_is_the_demos_and_their_mirror_images():
    """bundled:pusht_mirror (the best state recipe's training set) holds the 206 demos and their 206 mirror images:
    each mirrored episode's actions are the original's reflected across x + y = 512, and its rewards are the same."""
    from robopolicy.configs import resolve_path

    mirror = LeRobotDataset(resolve_path("bundled:pusht_mirror"))
    plain = LeRobotDataset(resolve_path("bundled:pusht"))
    assert mirror.num_episodes == 412 and mirror.num_frames == 2 * plain.num_frames == 51300
    assert "observation.image" not in mirror.features and "next.reward" in mirror.features
    starts, ends = mirror.episode_bounds[:, 0], mirror.episode_bounds[:, 1]
    lengths = ends - starts
    np.testing.assert_array_equal(lengths[0::2], lengths[1::2])  # episode 2k + 1 is episode 2k mirrored
    a, b = mirror.episode_bounds[0], mirror.episode_bounds[1]
    actions, rewards = mirror.column("action"), mirror.column("next.reward")
    np.testing.assert_allclose(actions[b[0]:b[1]], 512 - actions[a[0]:a[1], ::-1], atol=1e-3)
    np.testing.assert_allclose(rewards[b[0]:b[1]], rewards[a[0]:a[1]], atol=1e-4)


# ---- bad input ---------------------------------------------------------------------------------

def _edit_info(root: Path, **changes):
    info = json.loads((root / "meta/info.json").read_text())
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    (root / "meta/info.json").write_text(json.dumps(info))


def test_missing_info_file(lowdim_dataset):
    (lowdim_dataset / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"info\.json: missing file"):
        LeRobotDataset(lowdim_dataset)


def test_missing_data_file(lowdim_dataset):
    (lowdim_dataset / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match=r"file-000\.parquet: missing file"):
        LeRobotDataset(lowdim_dataset)


def test_missing_video_file(camera_dataset):
    root, _ = camera_dataset
    shutil.rmtree(root / "videos")
    with pytest.raises(DatasetError, match=r"file-000\.mp4: missing file listed in .*checksums\.json"):
        LeRobotDataset(root)  # the checksum file lists it: found at load
    (root / "meta/checksums.json").unlink()  # a dataset LeRobot wrote: found at the first decode
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetError, match=r"file-000\.mp4: video file is missing"):
        ds.video_frames("observation.image")


def test_truncated_parquet(lowdim_dataset):
    path = lowdim_dataset / "data/chunk-000/file-000.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"file-000\.parquet: unreadable parquet"):
        LeRobotDataset(lowdim_dataset)


def test_shape_mismatch(lowdim_dataset):
    info = json.loads((lowdim_dataset / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [3]
    (lowdim_dataset / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"column 'observation.state'.*shape mismatch.*\[3\]"):
        LeRobotDataset(lowdim_dataset)


def test_dtype_mismatch(lowdim_dataset):
    info = json.loads((lowdim_dataset / "meta/info.json").read_text())
    info["features"]["action"]["dtype"] = "int64"
    (lowdim_dataset / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"column 'action'.*dtype mismatch.*float32.*int64"):
        LeRobotDataset(lowdim_dataset)


def test_unknown_codebase_version(lowdim_dataset):
    _edit_info(lowdim_dataset, codebase_version="v9.9")
    with pytest.raises(DatasetError, match=r"info\.json: codebase_version 'v9\.9' is not supported"):
        LeRobotDataset(lowdim_dataset)


def test_missing_info_field(lowdim_dataset):
    _edit_info(lowdim_dataset, fps=None)
    with pytest.raises(DatasetError, match=r"info\.json: field 'fps' is missing"):
        LeRobotDataset(lowdim_dataset)


def test_episode_index_gap(lowdim_dataset):
    path = lowdim_dataset / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    indices = table.column("episode_index").to_pylist()
    indices[3] = 7  # episode 3 missing, 7 twice
    table = table.set_column(table.column_names.index("episode_index"), "episode_index", pa.array(indices))
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"meta/episodes: episode_index has gaps.*found 7 at position 3"):
        LeRobotDataset(lowdim_dataset)


def test_data_rows_disagree_with_episode_metadata(lowdim_dataset):
    path = lowdim_dataset / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    ep = table.column("episode_index").to_numpy().copy()
    ep[35] = 0
    table = table.set_column(table.column_names.index("episode_index"), "episode_index", pa.array(ep))
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"'episode_index' is 0 at frame 35"):
        LeRobotDataset(lowdim_dataset)


def test_writer_rejects_wrong_frame_shape(tmp_path):
    from robopolicy.data.writer import LeRobotDatasetWriter
    from tests.conftest import LOWDIM_FEATURES

    with LeRobotDatasetWriter(tmp_path / "w", fps=10, features=LOWDIM_FEATURES) as w:
        w.add_episode({"observation.state": np.zeros((4, 2)), "action": np.zeros((4, 2))}, "ok")
        with pytest.raises(ValueError, match=r"'action'.*\(3,\), declared \(2,\)"):
            w.add_episode({"observation.state": np.zeros((4, 2)), "action": np.zeros((4, 3))}, "bad")
    # The good episode survived the bad one.
    assert LeRobotDataset(tmp_path / "w").num_episodes == 1


def test_zarr_errors(tmp_path):
    from robopolicy.importers.diffusion_policy_zarr import convert_pusht_zarr

    with pytest.raises(DatasetError, match="does not exist"):
        convert_pusht_zarr(tmp_path / "nope.zarr", tmp_path / "o", progress=False)
    import zarr

    root = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w", zarr_format=2)
    root.create_array("data/state", data=np.zeros((5, 5), np.float32))
    root.create_array("data/action", data=np.zeros((4, 2), np.float32))
    root.create_array("meta/episode_ends", data=np.array([5]))
    with pytest.raises(DatasetError, match=r"data/action has 4 rows, meta/episode_ends says 5"):
        convert_pusht_zarr(tmp_path / "bad.zarr", tmp_path / "o", progress=False)
