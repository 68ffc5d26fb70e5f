"""Compatibility with files LeRobot itself wrote (tests/fixtures/lerobot, made by bench/make_lerobot_fixtures.py).

The reader is checked against LeRobot 0.4.4's v3.0 (h264 video, AV1 video, images) and LeRobot 0.3.3's
v2.1; the writer is checked to produce the same schema, metadata and stream structure LeRobot produces
for the same data, which is what LeRobot's ``aggregate_datasets`` needs to merge the two
(bench/lerobot_merge.py runs that merge with LeRobot itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from robopolicy.data import format as fmt
from robopolicy.data.format import DatasetError
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.writer import LeRobotDatasetWriter

FIXTURES = Path(__file__).parent / "fixtures/lerobot"
SOURCE = np.load(FIXTURES / "expected.npz")
NUMERIC = ("observation.state", "action", "next.done", "observation.gripper")
LEROBOT_WRITTEN = ["v30_video_h264", "v30_video_av1", "v30_image", "v21_video"]


def source_episodes() -> list[dict[str, np.ndarray]]:
    bounds = np.cumsum([0, *SOURCE["lengths"]])
    return [{k: SOURCE[k][bounds[e]:bounds[e + 1]] for k in (*NUMERIC, "observation.image")}
            for e in range(len(SOURCE["lengths"]))]


def user_features(ds: LeRobotDataset) -> dict:
    return {k: {kk: v for kk, v in ft.items() if kk != "info"} for k, ft in ds.features.items()
            if k not in fmt.DEFAULT_FEATURES}


def write_like(fixture: str, root: Path, **kw) -> Path:
    """robopolicy writes the fixture's source data with the fixture's features."""
    ref = LeRobotDataset(FIXTURES / fixture)
    with LeRobotDatasetWriter(root, fps=ref.fps, features=user_features(ref), robot_type=ref.info["robot_type"],
                              **kw) as writer:
        for episode, task in zip(source_episodes(), SOURCE["tasks"]):
            writer.add_episode(episode, task=str(task))
    return root


@pytest.mark.parametrize("name", LEROBOT_WRITTEN)
def test_reads_what_lerobot_wrote(name):
    ds = LeRobotDataset(FIXTURES / name)
    assert ds.version == ("v2.1" if name.startswith("v21") else "v3.0")
    assert ds.camera_keys == ["observation.image"]
    assert (ds.image_keys if name == "v30_image" else ds.video_keys) == ["observation.image"]
    lengths = SOURCE["lengths"]
    np.testing.assert_array_equal(ds.episode_bounds[:, 1] - ds.episode_bounds[:, 0], lengths)
    for key in NUMERIC:
        np.testing.assert_array_equal(ds.column(key).reshape(SOURCE[key].shape), SOURCE[key])
    assert ds.column("next.done").dtype == np.bool_ and ds.column("observation.gripper").dtype == np.int64
    assert [ds.tasks[int(ds.column("task_index")[f, 0])] for f in ds.episode_bounds[:, 0]] == list(SOURCE["tasks"])
    frames = ds.column("observation.image").astype(int)
    err = np.abs(frames - SOURCE["observation.image"].astype(int)).mean(axis=(1, 2, 3))
    # PNG is lossless; the codecs lose ~1-3 levels on flat colours, while a frame off by one is off by ~60.
    assert err.max() == 0 if name == "v30_image" else err.max() < 5, err
    middle = ds.camera_frames("observation.image", episode_index=1)
    assert middle.shape == (lengths[1], 32, 48, 3)
    item = ds[int(ds.episode_bounds[2, 0]) + 1]
    assert item["task"] == SOURCE["tasks"][2] and item["observation.image"].shape == (32, 48, 3)
    assert ds.stats["next.done"]["max"].tolist() == [True] and ds.stats["observation.gripper"]["max"].tolist() == [2]
    assert ds.stats["observation.image"]["mean"].shape == (3, 1, 1)


def _parquet_types(path: Path) -> dict[str, str]:
    return {f.name: str(f.type) for f in pq.read_schema(path)}


def _hf_features(path: Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"huggingface"])["info"]["features"]


@pytest.mark.parametrize("fixture,kw", [("v30_video_h264", {}), ("v30_image", {"use_videos": False})])
def test_writes_what_lerobot_writes(tmp_path, fixture, kw):
    """Same source data, same features: the same parquet schemas, feature metadata, stats types and info."""
    ref, ours = FIXTURES / fixture, write_like(fixture, tmp_path / "ours", **kw)
    data = "data/chunk-000/file-000.parquet"
    assert _parquet_types(ours / data) == _parquet_types(ref / data)
    assert _hf_features(ours / data) == _hf_features(ref / data)  # "_type": "List", Image, Value
    episodes = "meta/episodes/chunk-000/file-000.parquet"
    ref_types, our_types = _parquet_types(ref / episodes), _parquet_types(ours / episodes)
    assert set(our_types) == set(ref_types)
    # min/max of bool and int features in their own type (LeRobot's aggregate cannot mix bool with double).
    for column in ref_types:
        assert our_types[column] == ref_types[column], column
    assert pq.read_schema(ours / fmt.TASKS_PATH).names == pq.read_schema(ref / fmt.TASKS_PATH).names
    assert json.loads(pq.read_schema(ours / fmt.TASKS_PATH).metadata[b"pandas"])["index_columns"] == \
        json.loads(pq.read_schema(ref / fmt.TASKS_PATH).metadata[b"pandas"])["index_columns"]
    ref_info, our_info = (json.loads((p / fmt.INFO_PATH).read_text()) for p in (ref, ours))
    for field in ("codebase_version", "features", "fps", "robot_type", "chunks_size", "data_files_size_in_mb",
                  "video_files_size_in_mb", "data_path", "video_path", "total_episodes", "total_frames", "total_tasks"):
        assert our_info[field] == ref_info[field], field
    ref_stats, our_stats = (json.loads((p / fmt.STATS_PATH).read_text()) for p in (ref, ours))
    assert our_stats["next.done"]["min"] == [False] and ref_stats["next.done"]["min"] == [False]
    assert set(our_stats) == set(ref_stats)


def _stream_structure(path: Path) -> tuple:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.dts is not None]
        delay = packets[0].pts - packets[0].dts  # decode delay: how far dts runs behind pts (B-frame depth)
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
        return stream.codec_context.name, stream.codec_context.pix_fmt, stream.time_base, delay, keyframes[:2]


def test_video_stream_structure_matches_lerobot(tmp_path):
    """LeRobot's aggregate stream-copies MP4 files into one; that needs the same decode delay and time base
    (robopolicy's old 20-frame GOP with two B-frames made the muxer reject the merged file)."""
    ours = write_like("v30_video_h264", tmp_path / "ours")
    video = "videos/observation.image/chunk-000/file-000.mp4"
    assert _stream_structure(ours / video) == _stream_structure(FIXTURES / "v30_video_h264" / video)


def test_image_storage_round_trip_is_lossless(tmp_path):
    root = write_like("v30_image", tmp_path / "img", use_videos=False)
    ds = LeRobotDataset(root)
    assert ds.image_keys == ["observation.image"] and ds.video_keys == [] and ds.info["video_path"] is None
    assert not (root / "videos").exists()
    np.testing.assert_array_equal(ds.column("observation.image"), SOURCE["observation.image"])
    np.testing.assert_array_equal(ds.image_frames("observation.image", 2), source_episodes()[2]["observation.image"])
    assert ds.stats["observation.image"]["max"].shape == (3, 1, 1)


def test_image_column_without_bytes_is_a_clear_error(tmp_path):
    import pyarrow as pa

    root = write_like("v30_image", tmp_path / "img", use_videos=False)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    i = table.column_names.index("observation.image")
    paths = table.column(i).combine_chunks().field("path")
    empty = pa.StructArray.from_arrays([pa.nulls(len(paths), pa.binary()), paths], fields=list(fmt.IMAGE_ARROW_TYPE))
    pq.write_table(table.set_column(i, "observation.image", empty), path)
    with pytest.raises(DatasetError, match=r"file-000.parquet: column 'observation.image': 25 images have no embedded bytes"):
        LeRobotDataset(root)
