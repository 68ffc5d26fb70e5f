"""Rerun views: recordings are read back with Rerun's own reader (rerun.chunk.RrdReader) and checked
for their entity paths and the number of frames on each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rerun  # noqa: F401  (the viz extra is part of `make test`; a missing viewer must fail, not skip)

from robopolicy.cli import main
from robopolicy.viz import rerun_views as views
from robopolicy.viz.trace import RolloutTrace
from tests.conftest import write_dataset

FIXTURES = Path(__file__).parent / "fixtures/lerobot"


def test_dataset_recording_has_cameras_curves_task_and_boundaries(tmp_path):
    path = views.save_dataset(FIXTURES / "v30_video_h264", tmp_path / "ds.rrd", episodes=[0, 2])
    rows = views.recording_rows(path, "frame")
    n = 8 + 6  # episodes 0 and 2
    assert rows == {"/cameras/observation.image": n, "/observation/state": n, "/observation/gripper": n,
                    "/action": n, "/data/next.done": n, "/episode/task": 2, "/episode/boundaries": 2,
                    "/episode/index": 2}
    assert views.recording_rows(path, "time") == rows


def test_dataset_recording_of_image_storage_through_the_cli(tmp_path):
    out = tmp_path / "img.rrd"
    assert main(["viz", f"root={FIXTURES / 'v30_image'}", "episodes=[]", f"output={out}"]) == 0
    assert views.recording_rows(out, "frame")["/cameras/observation.image"] == 25
    with pytest.raises(ValueError, match="give root=<dataset> .* or rrd=<recording>"):
        main(["viz"])


def _trace(steps: int = 10) -> RolloutTrace:
    trace = RolloutTrace(seed=7, fps=10, success_threshold=0.95)
    trace.frames = [np.full((64, 64, 3), i, np.uint8) for i in range(steps + 1)]
    trace.actions = [np.array([i, 2.0 * i], np.float32) for i in range(steps)]
    trace.coverages = list(np.linspace(0, 0.5, steps))
    trace.latencies_ms = [5.0 if i % 4 == 0 else 0.1 for i in range(steps)]
    trace.inference_steps = list(range(0, steps, 4))
    trace.chunks = [(s, np.zeros((6, 2), np.float32), 1) for s in trace.inference_steps]
    return trace


def test_rollout_recording_entities_and_frame_counts(tmp_path):
    path = views.save_rollout(_trace(10), tmp_path / "r.rrd", pixels_per_action_unit=0.5)
    rows = views.recording_rows(path, "step")
    assert rows["/env/frame"] == 11  # the start and after each of the 10 steps
    for entity in ("/metrics/coverage/value", "/metrics/coverage/threshold", "/metrics/latency_ms/select_action",
                   "/actions", "/action_space/executed", "/env/frame/executed"):
        assert rows[entity] == 10, entity
    for entity in ("/action_space/predicted_chunk", "/env/frame/predicted_chunk", "/metrics/latency_ms/inference"):
        assert rows[entity] == 3, entity  # steps 0, 4, 8


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_eval_viz_writes_one_recording_per_recorded_episode_with_the_policys_chunks(tmp_path):
    """``robopolicy eval viz=true`` on a real (untrained) MLP policy: its predict_chunk calls are the chunks drawn."""
    import json

    from robopolicy.data.reader import LeRobotDataset
    from robopolicy.train.trainer import make_policy_for_dataset

    rng = np.random.default_rng(0)
    features = {"observation.state": {"dtype": "float32", "shape": [2], "names": None},
                "observation.environment_state": {"dtype": "float32", "shape": [16], "names": None},
                "action": {"dtype": "float32", "shape": [2], "names": None}}
    episodes = [{k: rng.uniform(0, 512, (20, ft["shape"][0])).astype(np.float32) for k, ft in features.items()}
                for _ in range(2)]
    root = write_dataset(tmp_path / "pusht_like", episodes, features=features)
    config = {"type": "mlp", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "hidden_dims": [32]}
    policy = make_policy_for_dataset(config, LeRobotDataset(root),
                                     ["observation.state", "observation.environment_state"], "action", "min_max")
    policy.save(tmp_path / "policy")
    out = tmp_path / "eval"
    assert main(["eval", f"checkpoint={tmp_path / 'policy'}", "viz=true", "n_episodes=2", "n_videos=1", "max_steps=10",
                 "n_workers=1", "start_seed=5", f"output_dir={out}"]) == 0
    assert sorted(p.name for p in (out / "rerun").iterdir()) == ["episode_5.rrd"]  # only the recorded episode
    steps = json.loads((out / "eval_report.json").read_text())["episodes"][0]["steps"]
    rows = views.recording_rows(out / "rerun/episode_5.rrd", "step")
    assert rows["/env/frame"] == steps + 1 and rows["/metrics/coverage/value"] == steps
    chunks = -(-steps // 4)  # Ta = 4: one inference every 4 steps
    assert rows["/env/frame/predicted_chunk"] == chunks and rows["/metrics/latency_ms/inference"] == chunks
    assert rows["/action_space/executed"] == steps


def test_chunk_tap_leaves_the_policy_as_it_was():
    from robopolicy.viz.trace import ChunkTap

    class Planner:
        n_obs_steps = 3

        def predict_chunk(self, history):
            return np.arange(12.0).reshape(1, 6, 2)

    planner, trace = Planner(), RolloutTrace(seed=0, fps=10, success_threshold=0.9)
    tap = ChunkTap(planner, trace, current_step=lambda: 4)
    assert planner.predict_chunk(None).shape == (1, 6, 2)
    tap.close()
    assert "predict_chunk" not in vars(planner) and len(trace.chunks) == 1
    step, chunk, offset = trace.chunks[0]
    assert step == 4 and offset == 2 and chunk.shape == (6, 2)
    planner.predict_chunk(None)
    assert len(trace.chunks) == 1  # closed: no longer recorded
