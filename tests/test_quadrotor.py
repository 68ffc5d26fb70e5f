"""Quadrotor simulator (L2F), SE(3) expert, DART recording to LeRobot v3.0, setpoint teleop."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("l2f", reason="L2F not installed (pip install l2f: an sdist, builds with gcc)")

from robopolicy.experts.quadrotor import (  # noqa: E402
    KeyboardSetpoints,
    SE3Controller,
    SetpointTeleop,
    expert_rollout,
    record_demonstrations,
    scripted_setpoints,
)
from robopolicy.sim.quadrotor import (  # noqa: E402
    OBS_DIM,
    STATE_KEY,
    QuadrotorConfig,
    QuadrotorEnv,
    QuadrotorVecEnv,
    crazyflie_model,
    figure8_target,
    summarize,
)


def test_model_hover_action_balances_gravity():
    m = crazyflie_model()
    assert 0.02 < m.mass < 0.05 and m.gravity == pytest.approx(9.81)
    a = m.hover_action
    assert -1 < a < 1
    assert 4 * m.action_to_thrust(np.array([a]))[0] == pytest.approx(m.mass * m.gravity, rel=1e-6)


def test_observation_layout_matches_state():
    env = QuadrotorVecEnv(2, task="hover", seed=3)
    obs = env.reset(seed=3)
    assert obs.shape == (2, OBS_DIM) and np.isfinite(obs).all()
    R = obs[:, 3:12].reshape(2, 3, 3)
    np.testing.assert_allclose(R @ np.transpose(R, (0, 2, 1)), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-5)
    states = env.backend.state.states
    for i in range(2):
        np.testing.assert_allclose(obs[i, 0:3], np.asarray(states[i].position), atol=1e-6)
        np.testing.assert_allclose(obs[i, 12:15], np.asarray(states[i].linear_velocity), atol=1e-6)
        np.testing.assert_allclose(obs[i, 15:18], np.asarray(states[i].angular_velocity), atol=1e-6)


def test_free_fall_crashes_into_the_ground():
    env = QuadrotorVecEnv(1, task="waypoint", seed=0)
    env.reset(seed=0)
    states = env.backend.state.states  # a copy: level, at rest, equal rotor speeds
    s = states[0]
    s.position, s.orientation, s.linear_velocity, s.angular_velocity, s.rpm = [0, 0, 0], [1, 0, 0, 0], [0] * 3, [0] * 3, [0.5] * 4
    env.backend.state.states = states
    for _ in range(200):
        _, _, term, _, infos = env.step(-np.ones((1, 4)))
        if term[0]:
            break
    assert term[0] and infos["final"][0][1].crash and infos["final"][0][1].crash_reason == "ground"


def test_step_clips_commands_tracks_rotor_lag_and_observes_relative_to_the_target():
    env = QuadrotorVecEnv(4, task="waypoint", seed=5)
    env.reset(seed=5)
    hover = env.model.hover_action
    commands = np.array([[np.nan, 0.2, -0.3, 1.0], [np.inf, -np.inf, 2.0, -2.0], [hover] * 4, [0.9, 0.1, 0.5, -0.9]])
    before = env.rotor_estimate.copy()
    obs, reward, term, trunc, infos = env.step(commands)
    sent = np.array([[-1, 0.2, -0.3, 1.0], [1, -1, 1, -1], [hover] * 4, [0.9, 0.1, 0.5, -0.9]], dtype=np.float32)
    np.testing.assert_array_equal(env.prev_action, sent)  # NaN means motors off; +-inf clip
    gain = np.where(sent > before, env._k_rise, env._k_fall)
    np.testing.assert_allclose(env.rotor_estimate, before + (sent - before) * gain, rtol=1e-6)
    assert env._k_rise != env._k_fall
    states = env.backend.state.states
    position = np.array([s.position for s in states[:4]])
    velocity = np.array([s.linear_velocity for s in states[:4]])
    np.testing.assert_allclose(obs[:, 0:3], position - infos["target_pos"], atol=1e-6)
    np.testing.assert_allclose(obs[:, 12:15], velocity - infos["target_vel"], atol=1e-6)
    np.testing.assert_array_equal(obs[:, 18:22], env.rotor_estimate)
    assert np.abs(infos["target_pos"]).max() > 0.1  # waypoints, not the origin
    np.testing.assert_allclose(infos["error"], np.linalg.norm(obs[:, 0:3], axis=1), rtol=1e-6)
    np.testing.assert_allclose(reward, -infos["error"], rtol=1e-6)
    assert not term.any() and not trunc.any() and infos["final"] == []
    kept = obs.copy()
    env.step(commands)
    np.testing.assert_array_equal(obs, kept)  # each step hands out a fresh observation


@pytest.mark.parametrize("where, reason", [("upside_down", "tilt"), ("far", "out_of_bounds"), ("below", "ground"),
                                           ("nan", "nonfinite")])
def test_crash_checks(where, reason, monkeypatch):
    env = QuadrotorVecEnv(3, task="waypoint", seed=0)
    env.reset(seed=0)
    states = env.backend.state.states
    s = states[1]
    if where == "upside_down":
        s.orientation = [0.0, 1.0, 0.0, 0.0]  # 180 degrees about x
    elif where == "far":
        s.position = [0.0, 5.0 * env.config.bound, 0.0]
    elif where == "below":
        s.position = [0.0, 0.0, -env.config.ground_depth - 0.2]
    else:  # L2F itself does not produce NaN from a NaN state; fake one in its observation
        l2f_step = env.backend.step

        def step_to_nan(actions):
            l2f_step(actions)
            env.backend.obs[1, 13] = np.nan  # a velocity: not position or tilt, still a crash

        monkeypatch.setattr(env.backend, "step", step_to_nan)
    env.backend.state.states = states
    hover = np.full((3, 4), env.model.hover_action)
    _, reward, term, trunc, infos = env.step(hover)
    assert term.tolist() == [False, True, False] and not trunc.any()
    (index, stats), = infos["final"]
    assert index == 1 and stats.crash and not stats.success and stats.crash_reason == reason
    assert reward[1] <= -10.0 and reward[0] > -1.0
    assert np.isfinite(env.observation[1]).all()  # already the next episode's first observation


def test_gym_env_api():
    env = QuadrotorEnv(QuadrotorConfig(task="hover", episode_s=0.2))
    obs, info = env.reset(seed=1)
    assert obs[STATE_KEY].shape == (OBS_DIM,) and env.action_space.shape == (4,)
    done, steps = False, 0
    while not done:
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        done, steps = term or trunc, steps + 1
    assert "episode" in info and steps <= 20


def test_expert_hovers_and_recovers():
    # L2F's initial states: up to 90 deg tilt, 1 m/s, rotors below hover; a few start too low and fast
    # to stop before the ground (1 m below the target): over 128 episodes the expert succeeds ~98 %.
    stats = expert_rollout("hover", n_episodes=16, n_envs=8, seed=0)
    s = summarize(stats)
    assert s["success_rate"] >= 0.85 and s["crash_rate"] <= 0.15, s


def test_expert_reaches_waypoints():
    s = summarize(expert_rollout("waypoint", n_episodes=16, n_envs=8, seed=1))
    assert s["success_rate"] >= 0.9 and s["crash_rate"] == 0.0, s


def test_expert_tracks_figure8():
    s = summarize(expert_rollout("figure8", n_episodes=4, n_envs=4, seed=2))
    assert s["crash_rate"] == 0.0 and s["rmse_mean"] < 0.15, s


def test_figure8_target_derivatives():
    cfg = QuadrotorConfig(task="figure8")
    t = np.linspace(0, 10, 2001)
    p, v, a = figure8_target(t, cfg)
    dt = t[1] - t[0]
    np.testing.assert_allclose(np.gradient(p, dt, axis=0)[5:-5], v[5:-5], atol=2e-3)
    smooth = np.abs(t - cfg.figure8_ramp_s) > 0.01  # the acceleration steps where the speed-up ramp ends
    smooth[:5] = smooth[-5:] = False
    np.testing.assert_allclose(np.gradient(v, dt, axis=0)[smooth], a[smooth], atol=2e-2)
    assert np.allclose(p[0], 0) and np.allclose(v[0], 0)


def test_record_dart_demonstrations(tmp_path):
    out = record_demonstrations(tmp_path / "ds", task="hover", n_episodes=4, n_envs=4, seed=0, dart_noise=0.05,
                                config=QuadrotorConfig(episode_s=3.0))
    assert out["episodes_run"] == 4 and out["episodes_kept"] >= 3
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == out["episodes_kept"]
    assert info["features"][STATE_KEY]["shape"] == [OBS_DIM] and info["fps"] == 100
    from robopolicy.data.reader import LeRobotDataset

    ds = LeRobotDataset(tmp_path / "ds")
    assert len(ds) == info["total_frames"]


def test_dagger_recording_flies_the_policy_and_stores_the_experts_labels(tmp_path):
    """A driver that idles the rotors (a policy that lets the drone fall) flies every episode into the ground;
    each stored state is labelled with the expert's action for that state, and crashed episodes are kept."""
    ctrl = SE3Controller()
    idle = np.full(4, -1.0, dtype=np.float32)
    out = record_demonstrations(tmp_path / "dagger", task="hover", n_episodes=4, n_envs=4, seed=600000,
                                dart_noise=0.0, only_successful=False, config=QuadrotorConfig(episode_s=3.0),
                                driver=lambda obs: np.tile(idle, (len(obs), 1)))
    assert out["flown_by"] == "policy" and out["flown"]["crash_rate"] == 1.0 and out["episodes_kept"] == 4
    from robopolicy.data.reader import LeRobotDataset

    ds = LeRobotDataset(tmp_path / "dagger")
    state, action = ds.column(STATE_KEY), ds.column("action")
    assert not np.allclose(action, idle)  # the labels are not what flew
    np.testing.assert_allclose(action, ctrl(state.astype(np.float64)), atol=1e-5)  # they are the expert's
    assert state[:, 2].min() < state[0, 2] - 0.2  # and the drone fell: the policy flew, not the expert
    expert = record_demonstrations(tmp_path / "expert", task="hover", n_episodes=4, n_envs=4, seed=600000,
                                   dart_noise=0.0, config=QuadrotorConfig(episode_s=3.0))
    assert expert["flown_by"] == "expert" and expert["flown"]["crash_rate"] == 0.0


def test_record_dagger_policy_from_the_cli_needs_a_stateless_policy(tmp_path):
    """``robopolicy record task=quadrotor_hover dagger_policy=<checkpoint>``: an MLP with To = Ta = 1 flies; a policy
    with an observation history is refused by name (its queue cannot follow drones that reset one by one)."""
    from robopolicy import cli
    from robopolicy.configs import load_config
    from robopolicy.data.reader import LeRobotDataset
    from robopolicy.train.trainer import make_policy_for_dataset

    record_demonstrations(tmp_path / "demos", task="hover", n_episodes=2, n_envs=2, seed=0, only_successful=False,
                          config=QuadrotorConfig(episode_s=1.0))
    ds = LeRobotDataset(tmp_path / "demos")
    for name, to in (("mlp1", 1), ("mlp2", 2)):
        policy = make_policy_for_dataset({"type": "mlp", "n_obs_steps": to, "horizon": 1 if to == 1 else 2,
                                          "n_action_steps": 1, "hidden_dims": [16]}, ds, [STATE_KEY], "action",
                                         "min_max")
        policy.save(tmp_path / name)
    args = ["task=quadrotor_hover", "device=expert", "num_episodes=2", "seed=600000"]
    report = cli.cmd_record(load_config("record", [*args, f"dagger_policy={tmp_path / 'mlp1'}",
                                                   f"output={tmp_path / 'flights'}"]))
    assert report["flown_by"] == "policy" and report["episodes_run"] == 2 and report["episodes_kept"] == 2
    with pytest.raises(ValueError, match="n_obs_steps = n_action_steps = 1.*To=2, Ta=1"):
        cli.cmd_record(load_config("record", [*args, f"dagger_policy={tmp_path / 'mlp2'}",
                                              f"output={tmp_path / 'refused'}"]))
    assert not (tmp_path / "refused").exists()


def test_teleop_setpoint_stream_and_record(tmp_path):
    tele = SetpointTeleop(seed=0)
    ep = tele.run(scripted_setpoints([(0.0, 0.0, 0.0), (0.5, 0.0, 0.2)], hold_steps=300))
    assert ep[STATE_KEY].shape == (600, OBS_DIM)
    assert np.linalg.norm(ep[STATE_KEY][-1, 0:3]) < 0.1  # reached the last setpoint
    n = tele.record(tmp_path / "tele", [scripted_setpoints([(0, 0, 0.3)], hold_steps=50)])
    assert n == 1 and (tmp_path / "tele/meta/info.json").is_file()
    with pytest.raises(RuntimeError, match="not available"):
        KeyboardSetpoints()


def test_controller_batched_shape():
    ctrl = SE3Controller()
    obs = np.zeros((5, OBS_DIM), dtype=np.float32)
    obs[:, 3:12] = np.eye(3).reshape(-1)
    obs[:, 18:22] = ctrl.model.hover_action  # rotors at hover
    a = ctrl(obs)
    assert a.shape == (5, 4) and np.allclose(a, ctrl.model.hover_action, atol=1e-5)


class _ExpertAsPolicy:
    """The SE(3) expert behind the policy surface evaluate_policy uses (batched select_action, reset)."""

    def __init__(self):
        self.ctrl = SE3Controller()
        self.batches = []

    def reset(self):
        self.ctrl.reset()

    def select_action(self, observation):
        obs = observation[STATE_KEY]
        self.batches.append(len(obs))
        return self.ctrl(obs)


def test_evaluate_policy_flies_each_drone_one_episode_in_aligned_batches():
    from robopolicy.sim.quadrotor import evaluate_policy

    pol = _ExpertAsPolicy()
    stats = evaluate_policy(pol, "waypoint", n_episodes=12, n_envs=8, seed=3)
    assert len(stats) == 12 and all(s.steps == 500 for s in stats)  # no crash: every episode runs its 5 s
    assert set(pol.batches) == {8, 4}  # a batch of 8 drones, then the remaining 4
    assert sum(s.success for s in stats) >= 11
    again = evaluate_policy(_ExpertAsPolicy(), "waypoint", n_episodes=12, n_envs=8, seed=3)
    assert [s.final_error for s in again] == [s.final_error for s in stats]  # seeded


class _StartRecorder:
    """Hovers the expert and keeps each batch's first observation: the episodes' initial states."""

    def __init__(self):
        self.ctrl, self.starts, self._new_batch = SE3Controller(), [], False

    def reset(self):
        self.ctrl.reset()
        self._new_batch = True

    def select_action(self, observation):
        obs = observation[STATE_KEY]
        if self._new_batch:
            self.starts.append(obs[:, :12].copy())
            self._new_batch = False
        return self.ctrl(obs)


def test_evaluation_batches_start_from_distinct_states_whatever_the_batch_size():
    """L2F seeds drone i of a batch seeded s as s + i: batch b seeded seed + b repeated all but one of the
    previous batch's starts. Episode k must start from seed + k, so n episodes are n distinct ones."""
    from robopolicy.sim.quadrotor import evaluate_policy

    in_fours, in_eights = _StartRecorder(), _StartRecorder()
    evaluate_policy(in_fours, "hover", n_episodes=8, n_envs=4, seed=11)  # (waypoints come from a per-batch generator)
    evaluate_policy(in_eights, "hover", n_episodes=8, n_envs=8, seed=11)
    starts = np.concatenate(in_fours.starts)
    assert len(np.unique(starts.round(6), axis=0)) == 8  # no start repeated across the two batches
    np.testing.assert_allclose(starts, in_eights.starts[0], atol=1e-6)  # the same 8 episodes in one batch of 8
    later = _StartRecorder()
    evaluate_policy(later, "hover", n_episodes=4, n_envs=4, seed=15)
    np.testing.assert_allclose(later.starts[0], starts[4:], atol=1e-6)  # episodes 15.. are the block's last four


def test_evaluation_steps_the_simulator_at_the_policys_training_rate():
    from robopolicy.sim.envs import evaluate_quadrotor

    at_100 = _ExpertAsPolicy()  # no fps: 100 Hz, L2F's rate
    report = evaluate_quadrotor(at_100, "quadrotor_waypoint", n_episodes=4, n_envs=4)
    assert report["sim_hz"] == 100.0 and len(at_100.batches) == 500  # one call per 10 ms over 5 s
    at_500 = _ExpertAsPolicy()
    at_500.fps = 500  # as an ONNX artifact carries it (torch policies: config.fps)
    report = evaluate_quadrotor(at_500, "quadrotor_waypoint", n_episodes=4, n_envs=4)
    assert report["sim_hz"] == 500.0 and len(at_500.batches) == 2500
    assert report["success_rate"] == 1.0


def test_record_train_eval_and_serve_on_the_quadrotor(tmp_path):
    """`robopolicy record task=quadrotor_hover`, `train`, `eval env.name=quadrotor_hover`, then the policy served
    to the simulated drone (own process, 500 Hz) through the control loop."""
    from robopolicy.cli import cmd_eval, cmd_record, cmd_train
    from robopolicy.configs import load_config

    demos = tmp_path / "hover"
    rec = cmd_record(load_config("record", [f"output={demos}", "task=quadrotor_hover", "device=expert",
                                            "num_episodes=4", "seed=1"]))
    assert rec["episodes_run"] == 4 and rec["episodes_kept"] >= 1
    with pytest.raises(ValueError, match="device=expert"):
        cmd_record(load_config("record", [f"output={tmp_path / 'x'}", "task=quadrotor_hover", "device=keyboard"]))
    run = cmd_train(load_config("train", ["policy=mlp_quadrotor", f"dataset.root={demos}",
                                          "dataset.observation_keys=[observation.state]", "steps=40",
                                          "batch_size=64", "save_every=0", "progress=false", "eval_every=40",
                                          "eval_episodes=8", "env.name=quadrotor_hover",
                                          f"output_dir={tmp_path / 'run'}"]))
    log = (run / "train_log.csv").read_text().splitlines()
    assert log[-1].split(",")[-2] != ""  # the in-training evaluation ran on the quadrotor
    report = cmd_eval(load_config("eval", [f"checkpoint={run}", "env.name=quadrotor_hover", "n_episodes=16",
                                           f"output_dir={tmp_path / 'eval'}"]))
    assert report["n_episodes"] == 16 and 0 <= report["crash_rate"] <= 1
    assert (tmp_path / "eval" / "eval_report.json").is_file()
    # The exported runtimes fly the same seeded episodes: the ONNX artifact and the C the Crazyflie would run.
    from robopolicy.cli import cmd_export
    from robopolicy.policies import load_policy
    from robopolicy.runtime import CPolicy, OnnxPolicy
    from robopolicy.sim.quadrotor import evaluate_policy

    reference = evaluate_policy(load_policy(run / "policy"), "hover", n_episodes=8, n_envs=8, seed=3)
    for fmt, runtime in (("onnx", OnnxPolicy), ("c", CPolicy)):
        exported = cmd_export(load_config("export", [f"checkpoint={run}", f"format={fmt}",
                                                     f"output={tmp_path / fmt}"]))
        flown = cmd_eval(load_config("eval", [f"checkpoint={exported}", "env.name=quadrotor_hover", "n_episodes=16",
                                              f"output_dir={tmp_path / ('eval_' + fmt)}"]))
        assert flown["n_episodes"] == 16 and flown["crash_reasons"] == report["crash_reasons"], fmt
        episodes = evaluate_policy(runtime.load(exported), "hover", n_episodes=8, n_envs=8, seed=3)
        assert [(e.crash, e.steps, e.crash_reason) for e in episodes] == [
            (e.crash, e.steps, e.crash_reason) for e in reference], fmt
        np.testing.assert_allclose([e.final_error for e in episodes], [e.final_error for e in reference],
                                   rtol=1e-3, err_msg=fmt)
    from robopolicy.robots.closed_loop import run_served_episodes

    served = run_served_episodes(str(run / "policy"), 1, start_seed=4, env="quadrotor_hover", episode_s=0.4,
                                 verbose=False)
    ep = served["episodes"][0]
    assert served["control_hz"] == 500.0 and ep["seed"] == 4
    assert ep["steps"] == 200 or ep["crash"]  # 0.4 s at 500 Hz, unless the barely trained policy crashed
    assert {"late_p99_us", "watchdog_trips", "safe_entries", "sim_overruns"} <= set(ep)


def test_quadrotor_eval_applies_the_sampler_and_execution_horizon_overrides(tmp_path, monkeypatch):
    """`robopolicy eval env.name=quadrotor_hover n_action_steps=1 num_inference_steps=3` flies the checkpoint with
    Ta 1 and 3 integration steps (the vectorized route once ignored both and flew the trained settings), and a Ta
    that does not fit the chunk is refused with the checkpoint named."""
    import robopolicy.sim.envs as envs
    from robopolicy.cli import cmd_eval, cmd_record
    from robopolicy.configs import load_config
    from robopolicy.data.reader import LeRobotDataset
    from robopolicy.train.trainer import make_policy_for_dataset

    demos = cmd_record(load_config("record", [f"output={tmp_path / 'hover'}", "task=quadrotor_hover",
                                              "device=expert", "num_episodes=2", "seed=2"]))
    assert demos["episodes_kept"] >= 1
    policy = make_policy_for_dataset({"type": "flow", "backbone": "mlp", "n_obs_steps": 2, "horizon": 8,
                                      "n_action_steps": 2, "mlp_hidden_dim": 16, "mlp_layers": 2,
                                      "num_inference_steps": 5}, LeRobotDataset(tmp_path / "hover"),
                                     ["observation.state"], "action", "min_max")
    policy.save(tmp_path / "policy")
    flown = []
    real = envs.evaluate_quadrotor

    def recording(policy, *args, **kwargs):
        flown.append((policy.config.n_action_steps, policy.config.num_inference_steps))
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(envs, "evaluate_quadrotor", recording)
    common = [f"checkpoint={tmp_path / 'policy'}", "env.name=quadrotor_hover", "n_episodes=4"]
    cmd_eval(load_config("eval", [*common, f"output_dir={tmp_path / 'e0'}"]))
    report = cmd_eval(load_config("eval", [*common, "n_action_steps=1", "num_inference_steps=3",
                                           f"output_dir={tmp_path / 'e1'}"]))
    assert flown == [(2, 5), (1, 3)] and report["n_episodes"] == 4
    with pytest.raises(ValueError, match=r"n_action_steps=9 does not fit the policy at .*policy"):
        cmd_eval(load_config("eval", [*common, "n_action_steps=9", f"output_dir={tmp_path / 'e2'}"]))
