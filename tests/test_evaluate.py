"""The evaluation runner: seeding, worker independence, statistics, artifacts and early success."""

from __future__ import annotations

import json
from pathlib import Path

import gym_pusht  # noqa: F401,E402 - required (the sim extra): a missing install fails loudly
import gymnasium as gym
import numpy as np
import pytest
import torch

from robopolicy.sim.evaluate import EpisodeResult, EvalResult, evaluate, latency_stats, wilson_interval  # noqa: E402
from robopolicy.sim.pusht import ENV_STATE_KEY, STATE_KEY, make_pusht_env  # noqa: E402
from robopolicy.sim.report import PLOT_FILE, REPORT_FILE  # noqa: E402

GOAL_STATE = np.array([100.0, 100.0, 256.0, 256.0, np.pi / 4])  # block exactly on the goal, agent far away


class ChunkedPusher:
    """Scripted stand-in for a chunking policy: every 4 calls it plans 4 noisy steps toward the block.

    The noise comes from torch's global RNG, so equal results across worker counts show that the
    evaluator seeds torch per episode.
    """

    chunk = 4

    def __init__(self) -> None:
        self.queue: list[np.ndarray] = []

    @property
    def needs_new_chunk(self) -> bool:
        return not self.queue

    def reset(self) -> None:
        self.queue = []

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if not self.queue:
            agent = obs[STATE_KEY].astype(np.float64)
            block = obs[ENV_STATE_KEY].reshape(8, 2).mean(axis=0)
            noise = torch.randn(self.chunk, 2, dtype=torch.float64).numpy() * 10.0
            steps = np.linspace(0.25, 1.0, self.chunk)[:, None]
            self.queue = list(np.clip(agent + steps * (block - agent) + noise, 0.0, 512.0))
        return self.queue.pop(0)


class Hold:
    """Commands the agent's current position: nothing moves."""

    def reset(self) -> None:
        pass

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return obs[STATE_KEY].astype(np.float64)


class StartAtGoal(gym.Wrapper):
    """Every episode starts with the block already on the goal (the seed still resets the RNG)."""

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options={"reset_to_state": GOAL_STATE})


def goal_env() -> gym.Env:
    return StartAtGoal(make_pusht_env())


def _per_episode(result: EvalResult) -> list[tuple]:
    return [(e.seed, e.max_coverage, e.final_coverage, e.success, e.steps) for e in result.episodes]


def test_results_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    kwargs = dict(n_episodes=3, start_seed=100000, max_steps=40, progress=False)
    serial = evaluate(ChunkedPusher, n_workers=1, **kwargs)
    parallel = evaluate(ChunkedPusher, n_workers=2, n_videos=2, output_dir=tmp_path, **kwargs)

    assert serial.seeds == parallel.seeds == [100000, 100001, 100002]
    assert _per_episode(serial) == _per_episode(parallel)  # exact, not approximate
    assert len({e.max_coverage for e in serial.episodes}) == 3  # episodes really differ by seed
    assert any(e.max_coverage > 0 for e in serial.episodes), "the pusher should reach the block in some episode"

    # Artifacts, written from the worker processes (videos) and the parent (report, plot).
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["n_episodes"] == 3 and report["seeds"] == parallel.seeds
    assert [e["max_coverage"] for e in report["episodes"]] == [e.max_coverage for e in parallel.episodes]
    assert report["success_ci95"] == list(wilson_interval(parallel.n_successes, 3))
    assert report["latency_ms"]["n"] == sum(e.steps for e in parallel.episodes)
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == ["episode_100000.mp4", "episode_100001.mp4"]  # only the first n_videos episodes
    assert [e["video"] for e in report["episodes"]] == ["videos/episode_100000.mp4", "videos/episode_100001.mp4", None]


def test_video_decodes_with_one_frame_per_state(tmp_path: Path) -> None:
    import av
    result = evaluate(
        ChunkedPusher,
        env_factory=lambda: make_pusht_env(video_size=128),
        n_episodes=1,
        max_steps=12,
        n_workers=1,
        n_videos=1,
        output_dir=tmp_path,
        progress=False,
    )
    with av.open(str(tmp_path / result.episodes[0].video)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
    assert len(frames) == result.episodes[0].steps + 1 == 13  # the start state, then one per action
    assert frames[0].shape == (128, 128, 3)
    # The first frame shows the reset state: H.264 is lossy, so compare loosely.
    env = make_pusht_env(video_size=128)
    env.reset(seed=result.seeds[0])
    assert np.abs(frames[0].astype(int) - env.render()).mean() < 5.0


def test_latency_stats_separate_chunk_calls() -> None:
    result = evaluate(ChunkedPusher, n_episodes=2, max_steps=10, n_workers=1, progress=False)
    for ep in result.episodes:
        assert len(ep.latencies_ms) == ep.steps == 10
        assert len(ep.chunk_latencies_ms) == 3  # calls 0, 4 and 8 plan a new chunk
    for stats, n in ((result.latency_ms, 20), (result.chunk_latency_ms, 6)):
        assert stats["n"] == n
        assert 0 <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
        assert stats["mean"] > 0
    # A policy without needs_new_chunk has no chunk calls to report.
    plain = evaluate(Hold, n_episodes=1, max_steps=3, n_workers=1, progress=False)
    assert plain.chunk_latency_ms["n"] == 0 and plain.chunk_latency_ms["p50"] is None
    json.dumps(plain.to_dict())  # JSON-able even with missing stats


def test_success_ends_episode_early_and_failure_runs_to_max_steps() -> None:
    won = evaluate(Hold, env_factory=goal_env, n_episodes=2, max_steps=50, n_workers=1, progress=False)
    assert [e.steps for e in won.episodes] == [1, 1]
    assert all(e.success and e.max_coverage == pytest.approx(1.0) for e in won.episodes)
    assert won.success_rate == 1.0

    lost = evaluate(Hold, n_episodes=2, max_steps=7, n_workers=1, progress=False)
    assert [e.steps for e in lost.episodes] == [7, 7]
    assert not any(e.success for e in lost.episodes) and lost.success_rate == 0.0

    # The evaluator's threshold decides success, even where the env would not terminate.
    strict = evaluate(Hold, env_factory=goal_env, n_episodes=1, max_steps=3, n_workers=1, progress=False,
                      success_threshold=1.01)
    assert strict.episodes[0].steps == 1 and not strict.episodes[0].success  # env terminated at >= 0.95


def test_wilson_interval_known_values() -> None:
    # Hand-computed with z = 1.96: center = (p + z^2/2n) / (1 + z^2/n),
    # half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert wilson_interval(50, 50) == pytest.approx((0.928652, 1.0), abs=1e-6)
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_eval_result_aggregates() -> None:
    episodes = [
        EpisodeResult(seed=s, max_coverage=c, final_coverage=c, success=c >= 0.95, steps=10, wall_s=0.1,
                      latencies_ms=[1.0, 3.0], chunk_latencies_ms=[3.0])
        for s, c in [(7, 0.96), (5, 0.5), (6, 0.7)]
    ]
    result = EvalResult(episodes=episodes, success_threshold=0.95, max_steps=300, n_workers=1, wall_s=1.0)
    assert result.seeds == [5, 6, 7]
    assert result.n_successes == 1 and result.success_rate == pytest.approx(1 / 3)
    assert result.mean_max_coverage == pytest.approx(0.72)
    lo, hi = result.max_coverage_ci
    half = 1.959964 * np.std([0.96, 0.5, 0.7], ddof=1) / np.sqrt(3)
    assert (lo, hi) == pytest.approx((0.72 - half, 0.72 + half), abs=1e-5)
    assert result.latency_ms["n"] == 6 and result.latency_ms["mean"] == pytest.approx(2.0)
    assert latency_stats([1.0, 2.0, 3.0, 4.0, 5.0])["p50"] == 3.0
    assert "success 1/3 = 33.3%" in result.summary()


def test_bad_policies_and_arguments_fail_clearly() -> None:
    class WrongShape(Hold):
        def select_action(self, obs):
            return np.zeros(3)

    with pytest.raises(ValueError, match=r"episode seed 100000, step 0.*shape \(2,\)"):
        evaluate(WrongShape, n_episodes=1, n_workers=1, progress=False)
    with pytest.raises(TypeError, match="picklable"):
        evaluate(lambda: Hold(), n_episodes=2, n_workers=2, progress=False)
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate(Hold, n_episodes=0, progress=False)
