"""The Newton push task on CPU: per-seed determinism, partial resets, the expert, recording and evaluation.

A few worlds and a few steps each. The first run on a machine compiles Warp's kernels (~35-60 s on 2 cores, into
WARP_CACHE_PATH or ~/.cache/warp/<version>); later runs load them from the cache (docs/newton.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp

from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.recorder import DatasetRecorder
from robopolicy.experts.newton_push import expert_action, record_demonstrations
from robopolicy.sim.envs import NEWTON_ENVS, check_env_name, env_factory, evaluate_newton
from robopolicy.sim.newton_env import (
    FEATURES,
    SUCCESS_RADIUS,
    NewtonPushEnv,
    evaluate_policy,
    initial_from_seed,
)

wp.config.quiet = True


def rollout(env: NewtonPushEnv, seeds, steps: int) -> list[dict[str, np.ndarray]]:
    obs = env.reset(seeds)
    trace = [obs]
    for _ in range(steps):
        obs, *_ = env.step(expert_action(obs))
        trace.append(obs)
    return trace


def test_observations_match_the_dataset_features_and_the_seeded_start():
    env = NewtonPushEnv(3)
    obs = env.reset([11, 12, 13])
    for key in ("observation.state", "observation.environment_state"):
        assert obs[key].shape == (3, *FEATURES[key]["shape"]) and obs[key].dtype == np.float32
    for i, seed in enumerate([11, 12, 13]):
        init = initial_from_seed(seed)
        np.testing.assert_allclose(obs["observation.state"][i], init.pusher, atol=1e-6)
        env_state = obs["observation.environment_state"][i]
        np.testing.assert_allclose(env_state[:2], init.box, atol=1e-6)
        np.testing.assert_allclose(np.arctan2(env_state[3], env_state[2]), init.box_yaw, atol=1e-5)
        np.testing.assert_allclose(env_state[4:], init.goal, atol=1e-6)


def test_an_episode_depends_only_on_its_seed():
    """The same seed gives the same trajectory whatever its slot, the batch size, or what ran before."""
    steps = 8
    a = rollout(NewtonPushEnv(3), [5, 6, 7], steps)
    b_env = NewtonPushEnv(2)
    rollout(b_env, [99, 98], 3)  # some unrelated history first
    b = rollout(b_env, [7, 5], steps)
    for t in range(steps + 1):
        for key in a[t]:
            np.testing.assert_array_equal(a[t][key][2], b[t][key][0])  # seed 7
            np.testing.assert_array_equal(a[t][key][0], b[t][key][1])  # seed 5
    moved = np.linalg.norm(a[-1]["observation.state"] - a[0]["observation.state"], axis=1)
    assert (moved > 0.05).all()  # the trajectories compared are not just standing still


def test_reset_with_a_mask_leaves_the_other_worlds_running():
    env = NewtonPushEnv(2)
    obs = env.reset([1, 2])
    for _ in range(3):
        obs, *_ = env.step(expert_action(obs))
    before = {k: v.copy() for k, v in obs.items()}
    obs = env.reset([1, 40], mask=np.array([False, True]))
    for key in obs:
        np.testing.assert_array_equal(obs[key][0], before[key][0])
    np.testing.assert_allclose(obs["observation.state"][1], initial_from_seed(40).pusher, atol=1e-6)
    assert env.steps.tolist() == [3, 0] and env.seeds.tolist() == [1, 40]


def test_the_expert_pushes_the_box_to_the_goal_and_holding_still_does_not():
    seeds = [0, 1, 2, 3]
    env = NewtonPushEnv(4)
    obs = env.reset(seeds)
    succeeded = np.zeros(4, dtype=bool)
    for _ in range(80):
        obs, reward, success, done = env.step(expert_action(obs))
        succeeded |= success
        if succeeded.all():
            break
    assert succeeded.all()
    # the box is not moved by anything but the pusher: holding the pusher still leaves it where it started
    obs = env.reset(seeds)
    start = obs["observation.environment_state"][:, :2].copy()
    for _ in range(10):
        obs, reward, success, done = env.step(obs["observation.state"])
    np.testing.assert_allclose(obs["observation.environment_state"][:, :2], start, atol=2e-3)
    assert not success.any()
    np.testing.assert_allclose(-reward, np.linalg.norm(start - env.goal, axis=1), atol=2e-3)
    assert (-reward > SUCCESS_RADIUS).all()


def test_bad_actions_and_seeds_are_refused():
    env = NewtonPushEnv(2)
    env.reset([0, 1])
    with pytest.raises(ValueError, match="actions must have shape"):
        env.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="one seed per environment"):
        env.reset([0])


def test_demonstrations_are_recorded_with_clean_expert_labels_and_their_seeds(tmp_path):
    report = record_demonstrations(tmp_path / "demos", n_episodes=3, n_envs=2, seed=50, max_steps=80)
    assert report["episodes_run"] == 3
    ds = LeRobotDataset(tmp_path / "demos")
    assert ds.num_episodes == report["episodes_kept"] >= 2
    obs = {k: ds.column(k) for k in ("observation.state", "observation.environment_state")}
    np.testing.assert_allclose(ds.column("action"), expert_action(obs), atol=1e-6)
    with DatasetRecorder(tmp_path / "demos") as recorder:
        seeds = recorder.episode_seeds
    assert len(seeds) == ds.num_episodes and set(seeds) <= {50, 51, 52}
    # each recorded episode starts where its seed puts it
    for episode, seed in enumerate(seeds):
        start = int(ds.episode_bounds[episode][0])
        np.testing.assert_allclose(obs["observation.state"][start], initial_from_seed(seed).pusher, atol=1e-6)


class ExpertPolicy:
    def reset(self) -> None:
        pass

    def select_action(self, observation):
        return expert_action(observation)


class StillPolicy(ExpertPolicy):
    def select_action(self, observation):
        return observation["observation.state"]


def test_evaluation_counts_each_seeded_episode_once():
    env = NewtonPushEnv(4, max_steps=60)
    good = evaluate_policy(ExpertPolicy(), n_episodes=6, n_envs=4, seed=1_000_000, max_steps=60, env=env)
    assert good["n_episodes"] == 6 and good["seeds"] == [1_000_000, 1_000_005]
    assert good["successes"] >= 5 and good["success_ci95"][0] < good["success_rate"] <= good["success_ci95"][1]
    bad = evaluate_policy(StillPolicy(), n_episodes=3, n_envs=3, seed=1_000_000, max_steps=15)
    assert bad["successes"] == 0 and bad["mean_length"] == 15 and bad["n_episodes"] == 3


def test_newton_push_is_an_evaluation_env_served_vectorized():
    assert check_env_name("newton_push") in NEWTON_ENVS
    with pytest.raises(ValueError, match="evaluate_newton"):
        env_factory("newton_push", ["observation.state"])
    with pytest.raises(ValueError, match="not a Newton task"):
        evaluate_newton(ExpertPolicy(), "pusht")


def test_train_and_eval_commands_on_newton_push(tmp_path):
    """`robopolicy train ... env.name=newton_push eval_every=...` and `robopolicy eval env.name=newton_push`."""
    import json

    from robopolicy.cli import cmd_eval, cmd_train
    from robopolicy.configs import load_config

    demos = tmp_path / "demos"
    record_demonstrations(demos, n_episodes=2, n_envs=2, seed=3, max_steps=80)
    run = cmd_train(load_config("train", [
        "policy=mlp", f"dataset.root={demos}", "dataset.observation_keys=[observation.state,observation.environment_state]",
        "env.name=newton_push", "steps=10", "batch_size=8", "save_every=0", "progress=false", "eval_every=10",
        "eval_episodes=2", f"output_dir={tmp_path / 'run'}"]))
    in_training = json.loads(next((run / "eval").glob("*/eval.json")).read_text())
    assert in_training["n_episodes"] == 2 and in_training["seeds"] == [500_000, 500_001]
    report = cmd_eval(load_config("eval", [f"checkpoint={run}", "env.name=newton_push", "n_episodes=3",
                                           "start_seed=2000000", f"output_dir={tmp_path / 'eval'}"]))
    assert report["n_episodes"] == 3 and report["seeds"] == [2_000_000, 2_000_002] and report["env"] == "newton_push"
    assert json.loads((tmp_path / "eval" / "eval_report.json").read_text())["successes"] == report["successes"]
