"""The SO-101 pick-cube task: the scripted expert in MuJoCo, its dataset, and the same expert through
LeRobot's driver on the simulated bus (the route demonstrations take on the arm)."""

from __future__ import annotations

import mujoco  # noqa: F401  (installed by `make test`; a missing one fails)
import numpy as np

from robopolicy.data.reader import LeRobotDataset  # noqa: E402
from robopolicy.sim.so101 import HOME  # noqa: E402
from robopolicy.sim.so101_pick import (  # noqa: E402
    CONTROL_HZ,
    PickExpert,
    SO101PickEnv,
    from_units,
    record_expert_episodes,
    to_units,
)


def test_units_round_trip_and_limits():
    env = SO101PickEnv()
    lo, hi = env.sim.joint_low, env.sim.joint_high
    q = np.array([0.3, -0.2, 0.5, 1.0, -2.0, 0.4])
    np.testing.assert_allclose(from_units(to_units(q, lo, hi), lo, hi), q)
    assert to_units(lo, lo, hi)[5] == 0.0 and to_units(hi, lo, hi)[5] == 100.0
    np.testing.assert_allclose(from_units(np.full(6, 1e4), lo, hi), hi)  # actions beyond the joints are clamped


def test_expert_picks_the_cube_and_doing_nothing_does_not():
    env = SO101PickEnv()
    expert = PickExpert(env)
    for seed in (0, 1, 2):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        picked = False
        for t in range(expert.episode_steps):
            obs, _, terminated, _, info = env.step(expert.act(t))
            picked = picked or terminated
        assert picked and info["coverage"] >= 1.0, seed
    obs, _ = env.reset(seed=0)
    hold = obs["observation.state"].copy()
    for _ in range(50):
        _, _, terminated, _, info = env.step(hold)
        assert not terminated and info["coverage"] < 0.2


def test_an_episode_starts_with_the_arm_at_rest_under_gravity():
    """A powered arm holding HOME sags a little; the first observation must be that pose, not HOME itself
    (deployment starts there, and a policy trained only on HOME starts missed 14 points more picks)."""
    env = SO101PickEnv()
    obs, _ = env.reset(seed=4)
    start = obs["observation.state"].copy()
    home = to_units(HOME, env.sim.joint_low, env.sim.joint_high)
    assert 1.0 < start[1] - home[1] < 3.0 and 1.0 < start[2] - home[2] < 3.0, start - home  # shoulder, elbow sag
    for _ in range(25):  # holding on for another second changes nothing: it was already at rest
        obs, *_ = env.step(home)
    np.testing.assert_allclose(obs["observation.state"], start, atol=0.05)
    unsettled, _ = SO101PickEnv(settle_s=0.0).reset(seed=4)
    np.testing.assert_allclose(unsettled["observation.state"], home, atol=1e-4)


def test_expert_demonstrations_are_a_lerobot_dataset_that_resumes(tmp_path):
    root = tmp_path / "so101_pick"
    assert record_expert_episodes(root, seeds=[0, 1]) == {"saved": 2, "failed": 0}
    assert record_expert_episodes(root, seeds=[2]) == {"saved": 1, "failed": 0}
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.fps == CONTROL_HZ
    steps = PickExpert(SO101PickEnv()).episode_steps
    assert ds.num_frames == 3 * steps
    assert ds.column("observation.environment_state").shape == (3 * steps, 3)
    gripper = ds.column("action")[:, 5]
    assert gripper.max() > 60 and gripper.min() < 5  # open, then closed on the cube


def test_expert_picks_through_the_lerobot_driver_on_the_simulated_bus(tmp_path):
    from robopolicy.data.recorder import DatasetRecorder
    from robopolicy.robots.feetech_sim import BusProcess
    from robopolicy.robots.lerobot_teleop import ScriptedTeleop, record_leader_follower
    from robopolicy.robots.so101_sim_arm import bring_to_start, simulated_follower

    seed = 3
    with BusProcess(seed=seed) as bus:
        robot = simulated_follower(bus, tmp_path)
        planner = SO101PickEnv()  # the expert plans in its own copy of the scene (same seed, same cube)
        planner.reset(seed=seed)
        expert = PickExpert(planner)
        with robot:
            q_start = bring_to_start(robot, planner)  # the arm powers on limp and sags; like an operator
            assert np.abs(q_start[:5] - HOME[:5]).max() < 0.1, q_start
            # the direct env starts an episode where the arm on the bus rests, not at HOME (which it cannot hold)
            direct_start = planner._obs()["observation.state"]
            on_bus = to_units(q_start, planner.sim.joint_low, planner.sim.joint_high)
            assert np.abs(on_bus - direct_start).max() < 0.4, (on_bus, direct_start)
            planner.sim.set_joint_positions(q_start)  # plan from where the arm really is
            expert.reset()
            teleop = ScriptedTeleop(robot.action_names, expert.act)
            feats = {**robot.features, "observation.environment_state": {"dtype": "float32", "shape": (3,),
                                                                          "names": ["x", "y", "z"]}}
            with DatasetRecorder(tmp_path / "driver_demos", fps=CONTROL_HZ, features=feats) as recorder:
                summary = record_leader_follower(
                    robot, teleop, recorder, fps=CONTROL_HZ, num_episodes=1,
                    episode_s=expert.episode_steps / CONTROL_HZ, task="pick the cube",
                    extra_observation=lambda: {"observation.environment_state":
                                               np.asarray(bus.call("cube"), dtype=np.float32)})
            cube = bus.call("cube")
    assert summary.saved == [0]
    assert cube[2] - 0.02 > 0.05, cube  # lifted through LeRobot's driver, the Feetech SDK and the pty
    ds = LeRobotDataset(tmp_path / "driver_demos")
    assert ds.num_episodes == 1
