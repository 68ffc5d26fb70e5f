"""robopolicy's dataset tools (merge, split, delete-episodes, info) on robopolicy- and LeRobot-written datasets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from robopolicy.cli import main
from robopolicy.data import tools
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import LeRobotDataset
from tests.conftest import linear_mapping_episodes, write_dataset
from tests.test_dataset_lerobot import FIXTURES, NUMERIC, SOURCE, source_episodes, write_like

CAMERA = "observation.image"


def assert_frames_close(got: np.ndarray, expected: np.ndarray, lossless: bool = False) -> None:
    err = np.abs(got.astype(int) - expected.astype(int)).mean(axis=(1, 2, 3))
    # Two generations of h264 lose a few levels on flat colours; a frame out of place is off by ~60.
    assert (err.max() == 0) if lossless else (err.max() < 6), err


def test_merge_robopolicy_and_lerobot_datasets_in_both_orders(tmp_path):
    ours = write_like("v30_video_h264", tmp_path / "ours")
    for order in ([ours, FIXTURES / "v30_video_h264"], [FIXTURES / "v30_video_h264", ours]):
        out = tools.merge(order, tmp_path / f"merged_{order[0].name}")
        ds = LeRobotDataset(out)
        assert ds.num_episodes == 6 and ds.num_frames == 2 * len(SOURCE["action"])
        assert ds.column("episode_index").ravel().tolist() == np.repeat(np.arange(6), [*SOURCE["lengths"]] * 2).tolist()
        assert ds.column("index").ravel().tolist() == list(range(ds.num_frames))
        assert sorted(ds.tasks.values()) == ["push the block", "reach the goal"]
        for key in NUMERIC:
            np.testing.assert_array_equal(ds.column(key).reshape(-1), np.concatenate([SOURCE[key]] * 2).reshape(-1))
        assert_frames_close(ds.column(CAMERA), np.concatenate([SOURCE[CAMERA]] * 2))
        assert int(ds.stats["action"]["count"][0]) == ds.num_frames
        np.testing.assert_allclose(ds.stats["action"]["mean"], SOURCE["action"].mean(0), rtol=1e-5)


def test_merge_mixes_storage_and_versions(tmp_path):
    """A v2.1 video dataset, a v3.0 image dataset and an AV1 one merge; use_videos=False stores PNGs losslessly."""
    roots = [FIXTURES / "v21_video", FIXTURES / "v30_image", FIXTURES / "v30_video_av1"]
    ds = LeRobotDataset(tools.merge(roots, tmp_path / "video"))
    assert ds.version == "v3.0" and ds.video_keys == [CAMERA] and ds.num_episodes == 9
    assert_frames_close(ds.column(CAMERA), np.concatenate([SOURCE[CAMERA]] * 3))
    images = LeRobotDataset(tools.merge([FIXTURES / "v30_image"] * 2, tmp_path / "images", use_videos=False))
    assert images.image_keys == [CAMERA]
    assert_frames_close(images.column(CAMERA), np.concatenate([SOURCE[CAMERA]] * 2), lossless=True)


def test_merge_refuses_incompatible_datasets(tmp_path):
    other_fps = write_dataset(tmp_path / "fps20", linear_mapping_episodes(2, 5), fps=20)
    lowdim = write_dataset(tmp_path / "fps10", linear_mapping_episodes(2, 5), fps=10)
    with pytest.raises(DatasetError, match=r"fps20: fps 20 differs from .*fps10's 10"):
        tools.merge([lowdim, other_fps], tmp_path / "out")
    with pytest.raises(DatasetError, match=r"features \['next.done', 'observation.gripper', 'observation.image'\] are not in both"):
        tools.merge([lowdim, FIXTURES / "v30_image"], tmp_path / "out2")
    with pytest.raises(ValueError, match="must not be one of the inputs"):
        tools.merge([lowdim], lowdim, overwrite=True)
    assert LeRobotDataset(lowdim).num_episodes == 2  # untouched


def test_delete_episodes_renumbers_and_keeps_the_rest(tmp_path):
    out = tools.delete_episodes(FIXTURES / "v21_video", [1], tmp_path / "clean")
    ds = LeRobotDataset(out)
    kept = [source_episodes()[0], source_episodes()[2]]
    assert ds.num_episodes == 2 and (ds.episode_bounds[:, 1] - ds.episode_bounds[:, 0]).tolist() == [8, 6]
    assert ds.tasks == {0: "push the block", 1: "reach the goal"}
    for key in NUMERIC:
        np.testing.assert_array_equal(ds.column(key).reshape(-1), np.concatenate([e[key] for e in kept]).reshape(-1))
    assert_frames_close(ds.column(CAMERA), np.concatenate([e[CAMERA] for e in kept]))
    stats = ds.stats["observation.gripper"]
    assert stats["max"].dtype.kind == "i" and int(stats["count"][0]) == 14
    with pytest.raises(ValueError, match=r"no episodes \[3\] to delete"):
        tools.delete_episodes(FIXTURES / "v21_video", [3], tmp_path / "bad")


def test_split_by_fraction_and_by_list(tmp_path):
    episodes = linear_mapping_episodes(n_episodes=8, length=5)
    root = write_dataset(tmp_path / "src", episodes)
    parts = tools.split(root, {"train": 0.75, "val": 0.25}, tmp_path / "splits")
    train, val = LeRobotDataset(parts["train"]), LeRobotDataset(parts["val"])
    assert (train.num_episodes, val.num_episodes) == (6, 2)
    np.testing.assert_array_equal(val.column("action"), np.concatenate([e["action"] for e in episodes[6:]]))
    assert tools.split_episodes(8, {"val": [0, 5], "train": 1.0}) == {"val": [0, 5], "train": [1, 2, 3, 4, 6, 7]}
    with pytest.raises(ValueError, match="episode 2 is in both split 'a' and 'b'"):
        tools.split_episodes(4, {"a": [1, 2], "b": [2]})
    with pytest.raises(ValueError, match="sum to at most 1"):
        tools.split_episodes(4, {"a": 0.7, "b": 0.7})
    with pytest.raises(ValueError, match="split 'b' gets no episodes"):
        tools.split_episodes(2, {"a": 0.9, "b": 0.1})


def test_info_of_a_lerobot_dataset():
    result = tools.info(FIXTURES / "v30_video_h264")
    assert result["episodes"] == 3 and result["frames"] == 25 and result["fps"] == 10
    assert result["episode_length"] == {"min": 6, "mean": 25 / 3, "max": 11}
    assert result["cameras"] == {CAMERA: "video"} and result["features"][CAMERA]["codec"] == "h264"
    assert result["tasks"] == {0: "push the block", 1: "reach the goal"}
    assert tools.info(FIXTURES / "v30_image")["cameras"] == {CAMERA: "image"}


def test_cli_dataset_actions(tmp_path, capsys):
    ours = write_like("v30_image", tmp_path / "ours", use_videos=False)
    shutil.copytree(FIXTURES / "v30_image", tmp_path / "theirs")
    assert main(["dataset", "action=merge", f"roots=[{ours},{tmp_path / 'theirs'}]", f"output={tmp_path / 'm'}"]) == 0
    assert main(["dataset", "action=delete-episodes", f"root={tmp_path / 'm'}", "episodes=[0,5]",
                 f"output={tmp_path / 'd'}"]) == 0
    assert main(["dataset", "action=split", f"root={tmp_path / 'd'}", "splits={a:0.5,b:0.5}", f"output={tmp_path / 's'}"]) == 0
    capsys.readouterr()
    assert main(["dataset", f"root={tmp_path / 's' / 'b'}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["cameras"] == {CAMERA: "image"}
    with pytest.raises(ValueError, match="dataset action=merge: give roots=..., output=..."):
        main(["dataset", "action=merge"])
    with pytest.raises(ValueError, match="unknown action 'verify-all'"):
        main(["dataset", "action=verify-all"])


def test_cli_dataset_info_on_the_bundled_dataset(capsys):
    assert main(["dataset", "root=bundled:pusht"]) == 0  # the shipped demos, named as a user would
    assert json.loads(capsys.readouterr().out)["episodes"] > 0
