"""Evaluation environments by name (``env.name``): PushT and the robosuite arms through one factory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from robopolicy.sim.envs import env_factory


def test_unknown_env_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"env.name='Lfit'.*pusht.*Lift"):
        env_factory("Lfit", ["observation.state"])


def test_pusht_factory_provides_the_keys_the_policy_reads():
    factory = env_factory("pusht", ["observation.state", "observation.environment_state"])
    pickle.dumps(factory)  # evaluation workers are spawned
    env = factory()
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"observation.state", "observation.environment_state"}
    env.close()
    with pytest.raises(ValueError, match="cannot provide"):
        env_factory("pusht", ["observation.images.wrist"])


def test_arm_factory_builds_the_task_with_cameras_from_image_keys():
    pytest.importorskip("robosuite")
    factory = env_factory("Lift", ["observation.state", "observation.environment_state"])
    pickle.dumps(factory)
    env = factory()
    try:
        obs, _ = env.reset(seed=1)
        assert env.task_name == "Lift" and env.cameras == ()
        assert obs["observation.environment_state"].shape == (10,)
        with pytest.raises(RuntimeError, match="offscreen_render=True"):
            env.render()
    finally:
        env.close()
    assert env_factory("PickPlaceCan", ["observation.images.agentview"]).args == ("PickPlaceCan", ("agentview",), False)


def test_eval_command_on_lift_with_a_trained_policy(tmp_path):
    """`robopolicy eval env.name=Lift`: a policy trained on two expert demos is evaluated on the arm task."""
    pytest.importorskip("robosuite")
    from robopolicy.cli import cmd_eval, cmd_record, cmd_train
    from robopolicy.configs import load_config

    demos = tmp_path / "lift"
    cmd_record(load_config("record", [f"output={demos}", "device=expert", "num_episodes=2", "seed=5"]))
    run = cmd_train(load_config("train", ["policy=mlp", f"dataset.root={demos}", "env.name=Lift", "steps=20",
                                          "batch_size=16", "save_every=0", "progress=false", "eval_every=20",
                                          "eval_episodes=1", "eval_workers=1", "env.max_steps=5",
                                          f"output_dir={tmp_path / 'run'}"]))
    log = (run / "train_log.csv").read_text().splitlines()
    assert log[-1].split(",")[-2] in ("0.0", "1.0")  # the in-training evaluation ran on Lift
    report = cmd_eval(load_config("eval", [f"checkpoint={run}", "env.name=Lift", "n_episodes=2", "n_workers=1",
                                           "max_steps=8", "n_videos=1", f"output_dir={tmp_path / 'eval'}"]))
    assert report["n_episodes"] == 2 and [e["steps"] for e in report["episodes"]] == [8, 8]
    assert np.isfinite(report["mean_max_coverage"])
    videos = sorted(p.name for p in (tmp_path / "eval").glob("videos/*.mp4"))
    from robopolicy.sim.envs import arm_renderer_available

    if arm_renderer_available():
        assert videos == [f"episode_{report['episodes'][0]['seed']}.mp4"]
    else:  # no EGL/OSMesa: evaluated without videos, with a message
        assert videos == []
    # the checkpoint records its demos' control rate; the server time-stamps chunks with it unless told otherwise
    import json

    from robopolicy.deploy.adapter import DEFAULT_FPS, load_policy_adapter
    from robopolicy.policies.registry import load_policy

    assert json.loads((run / "policy" / "config.json").read_text())["fps"] == 20.0
    assert load_policy_adapter(run / "policy", load_checkpoint=load_policy).spec.fps == 20.0
    assert load_policy_adapter(run / "policy", fps=5.0, load_checkpoint=load_policy).spec.fps == 5.0
    config = json.loads((run / "policy" / "config.json").read_text())
    del config["fps"]  # a checkpoint from before the field existed (and before checksums.json)
    (run / "policy" / "config.json").write_text(json.dumps(config))
    (run / "policy" / "checksums.json").unlink()
    assert load_policy_adapter(run / "policy", load_checkpoint=load_policy).spec.fps == DEFAULT_FPS
    config["fps"] = 20.0
    (run / "policy" / "config.json").write_text(json.dumps(config))
    # the same policy through the deployment path: policy server + 500 Hz control loop + robosuite behind the
    # reference arm bridge in its own process; an episode ends after max_steps env steps (no success in 10)
    from robopolicy.robots.closed_loop import run_served_episodes

    served = run_served_episodes(str(run / "policy"), 2, start_seed=7, env="Lift", max_steps=10, verbose=False)
    assert served["control_hz"] == 500.0 and served["n_episodes"] == 2
    for episode, seed in zip(served["episodes"], (7, 8), strict=True):
        assert episode["seed"] == seed and not episode["success"]
        assert 10 <= episode["steps"] <= 12
