"""robomimic HDF5 -> LeRobot v3.0, on a small file generated here."""

from __future__ import annotations

import json
from pathlib import Path

import h5py  # noqa: E402 - required (the arms extra): a missing install fails loudly
import numpy as np
import pytest

from robopolicy.data.format import DatasetError  # noqa: E402
from robopolicy.data.reader import LeRobotDataset  # noqa: E402
from robopolicy.importers.robomimic_hdf5 import convert_robomimic_hdf5  # noqa: E402

LENGTHS = {"demo_0": 6, "demo_1": 4, "demo_10": 5, "demo_2": 3}  # demo_10 sorts after demo_2


def make_file(path: Path, images: bool = True) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}}
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = sum(LENGTHS.values())
        for name, n in LENGTHS.items():
            g = data.create_group(name)
            d = {
                "robot0_eef_pos": rng.normal(size=(n, 3)),
                "robot0_eef_quat": rng.normal(size=(n, 4)),
                "robot0_gripper_qpos": rng.normal(size=(n, 2)),
                "robot0_joint_pos": rng.normal(size=(n, 7)),
                "object": rng.normal(size=(n, 10)),
                "actions": rng.uniform(-1, 1, size=(n, 7)),
                "rewards": (np.arange(n) == n - 1).astype(np.float64),
                "dones": (np.arange(n) == n - 1).astype(np.int64),
                "states": rng.normal(size=(n, 32)),
            }
            if images:
                img = np.zeros((n, 16, 24, 3), np.uint8)
                img[:, :8] = 200  # top half bright: lets the test see a flip
                img[:, :, :, 2] = (np.arange(n) * 30)[:, None, None]
                d["agentview_image"] = img
            for k in ("actions", "rewards", "dones", "states"):
                g.create_dataset(k, data=d[k])
            obs = g.create_group("obs")
            for k, v in d.items():
                if k not in ("actions", "rewards", "dones", "states"):
                    obs.create_dataset(k, data=v)
            g.attrs["num_samples"] = n
            demos[name] = d
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_2"]))
    return demos


def test_import_low_dim_and_images(tmp_path: Path):
    demos = make_file(tmp_path / "demo.hdf5")
    out = convert_robomimic_hdf5(tmp_path / "demo.hdf5", tmp_path / "ds")
    ds = LeRobotDataset(out)
    assert ds.fps == 20 and ds.num_episodes == 4 and ds.num_frames == 18
    assert ds.info["robot_type"] == "Panda"
    assert ds.tasks == {0: "Lift the cube."}
    assert ds.features["observation.state"]["shape"] == [9]
    assert ds.features["observation.state"]["names"][:4] == ["robot0_eef_pos.0", "robot0_eef_pos.1",
                                                             "robot0_eef_pos.2", "robot0_eef_quat.0"]
    assert ds.features["observation.images.agentview"]["dtype"] == "video"
    order = ["demo_0", "demo_1", "demo_2", "demo_10"]
    for e, name in enumerate(order):
        d = demos[name]
        lo, hi = ds.episode_bounds[e]
        assert hi - lo == LENGTHS[name]
        state = np.concatenate([d["robot0_eef_pos"], d["robot0_eef_quat"], d["robot0_gripper_qpos"]], axis=1)
        np.testing.assert_allclose(ds.column("observation.state")[lo:hi], state, rtol=1e-6)
        np.testing.assert_allclose(ds.column("observation.environment_state")[lo:hi], d["object"], rtol=1e-6)
        np.testing.assert_allclose(ds.column("action")[lo:hi], d["actions"], rtol=1e-6)
        np.testing.assert_array_equal(ds.column("observation.sim_state")[lo:hi], d["states"])
        np.testing.assert_array_equal(ds.column("next.done")[lo:hi, 0], d["dones"].astype(bool))
        frames = ds.video_frames("observation.images.agentview", e)
        assert frames.shape == (LENGTHS[name], 16, 24, 3)
        assert frames[:, :8, :, 0].mean() > 150 > frames[:, 8:, :, 0].mean()
        # Frames are 30 levels apart in blue; h264 (yuv420p, crf 18, LeRobot's 2-frame GOP) keeps each within 10.
        np.testing.assert_allclose(frames[:, 4, 4, 2].astype(float), np.arange(LENGTHS[name]) * 30, atol=10)


def test_import_filter_flip_and_low_dim_only(tmp_path: Path):
    make_file(tmp_path / "demo.hdf5")
    ds = LeRobotDataset(convert_robomimic_hdf5(tmp_path / "demo.hdf5", tmp_path / "a", filter_key="train",
                                               flip_images=True, include_sim_states=False, task="lift it"))
    assert ds.num_episodes == 2 and ds.num_frames == 9
    assert "observation.sim_state" not in ds.features
    assert ds.tasks == {0: "lift it"}
    frames = ds.video_frames("observation.images.agentview", 0)
    assert frames[:, 8:, :, 0].mean() > 150 > frames[:, :8, :, 0].mean()  # flipped upright
    ds = LeRobotDataset(convert_robomimic_hdf5(tmp_path / "demo.hdf5", tmp_path / "b", image_keys=[],
                                               state_keys=["robot0_joint_pos"], max_episodes=2))
    assert ds.video_keys == [] and ds.features["observation.state"]["shape"] == [7]
    assert ds.num_episodes == 2


def test_import_errors(tmp_path: Path):
    make_file(tmp_path / "demo.hdf5", images=False)
    with pytest.raises(DatasetError, match="does not exist"):
        convert_robomimic_hdf5(tmp_path / "nope.hdf5", tmp_path / "x")
    with pytest.raises(DatasetError, match="mask/valid"):
        convert_robomimic_hdf5(tmp_path / "demo.hdf5", tmp_path / "x", filter_key="valid")
    with pytest.raises(DatasetError, match="lacks state keys"):
        convert_robomimic_hdf5(tmp_path / "demo.hdf5", tmp_path / "y", state_keys=["robot0_nothing"])
    with h5py.File(tmp_path / "demo.hdf5", "a") as f:
        del f["data/demo_1/obs/object"]
        f["data/demo_1/obs"].create_dataset("object", data=np.zeros((2, 10)))
    with pytest.raises(DatasetError, match="demo_1/obs/object has 2 steps"):
        convert_robomimic_hdf5(tmp_path / "demo.hdf5", tmp_path / "z")
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(DatasetError, match="group 'data'"):
        convert_robomimic_hdf5(tmp_path / "bad.hdf5", tmp_path / "w")
