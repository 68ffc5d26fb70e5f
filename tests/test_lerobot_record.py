"""Leader-follower recording through LeRobot's drivers: a scripted operator moves a simulated SO-101 leader,
the simulated follower copies it, and robopolicy's recorder writes (and resumes) a LeRobot v3.0 dataset."""

from __future__ import annotations

import json
import math

import lerobot  # noqa: F401  (installed by `make test`; a missing one fails)
import mujoco  # noqa: F401  (installed by `make test`; a missing one fails)
import numpy as np
import pytest
import scservo_sdk  # noqa: F401  (installed by `make test`; a missing one fails)

from robopolicy.data.reader import LeRobotDataset  # noqa: E402
from robopolicy.data.recorder import DatasetRecorder  # noqa: E402
from robopolicy.robots.feetech_sim import BusProcess  # noqa: E402
from robopolicy.robots.lerobot_robot import LeRobotRobot  # noqa: E402
from robopolicy.robots.lerobot_teleop import (  # noqa: E402
    LeRobotTeleoperator,
    ScriptedLeaderOperator,
    record_leader_follower,
)
from robopolicy.sim.so101 import HOME  # noqa: E402

LEADER_RAW_AT_ZERO = (1990, 2150, 1870, 2222, 2001, 2430)  # another arm: its horns sit elsewhere


def wave(t: float) -> np.ndarray:
    """The scripted operator: pan and wrist roll swing +-20 degrees, the gripper opens and closes."""
    q = HOME.copy()
    q[0] = math.radians(20) * math.sin(2 * math.pi * 0.5 * t)
    q[4] = math.radians(20) * math.sin(2 * math.pi * 0.5 * t)
    q[5] = 0.3 + 0.5 * (1 + math.sin(2 * math.pi * 0.5 * t))
    return q


def test_leader_arm_records_and_resumes_a_lerobot_dataset(tmp_path):
    # each arm on its own simulated bus process, as two USB adapters would be
    with BusProcess() as follower_bus, BusProcess(kinematic=True, raw_at_zero=LEADER_RAW_AT_ZERO) as leader_bus:
        for bus, name in ((follower_bus, "follower"), (leader_bus, "leader")):
            (tmp_path / f"{name}.json").write_text(json.dumps(bus.calibration))
        operator = ScriptedLeaderOperator(leader_bus, wave).start()
        robot = LeRobotRobot(type="so101_follower", port=follower_bus.port, id="follower", calibration_dir=tmp_path,
                             control_hz=30.0, max_velocity=180.0)
        teleop = LeRobotTeleoperator(type="so101_leader", port=leader_bus.port, id="leader",
                                     calibration_dir=tmp_path)
        root = tmp_path / "so101_wave"
        try:
            with robot, teleop:
                # the first run turns its second attempt down (not written); the second resumes and appends
                for episodes, accept, saved in ((3, lambda e: e != 1, [0, 1]), (1, None, [2])):
                    recorder = DatasetRecorder(root, fps=15, features=robot.features, robot_type="so101_follower")
                    try:
                        summary = record_leader_follower(robot, teleop, recorder, fps=15, num_episodes=episodes,
                                                         episode_s=1.0, task="wave", accept=accept)
                    finally:
                        recorder.close()
                    assert summary.saved == saved
                    assert summary.discarded == episodes - len(saved)
                leader_now = np.degrees(leader_bus.joint_positions()[0])
                follower_now = np.degrees(follower_bus.joint_positions()[0])
        finally:
            operator.close()
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.fps == 15
    assert ds.num_frames == 45
    action = ds.column("action")
    state = ds.column("observation.state")
    assert action.shape == (45, 6) and state.shape == (45, 6)
    # the action is the leader's pan angle in the follower's units (degrees), swinging +-20
    assert 10 < action[:, 0].max() <= 21 and -21 <= action[:, 0].min() < -10
    # and the follower went with it (it lags behind a moving leader, by a few degrees)
    assert np.corrcoef(action[:, 0], state[:, 0])[0, 1] > 0.8
    assert abs(leader_now - follower_now) < 15


def test_robopolicy_record_device_lerobot_from_the_cli(tmp_path, capsys):
    """``robopolicy record device=lerobot arm.type=so101_follower ... teleop.type=so101_leader ...``: the command
    a user types, on two simulated buses; a second run appends to the same dataset."""
    from robopolicy import cli

    with BusProcess() as follower_bus, BusProcess(kinematic=True, raw_at_zero=LEADER_RAW_AT_ZERO) as leader_bus:
        for bus, name in ((follower_bus, "follower"), (leader_bus, "leader")):
            (tmp_path / f"{name}.json").write_text(json.dumps(bus.calibration))
        operator = ScriptedLeaderOperator(leader_bus, wave).start()
        root = tmp_path / "cli_wave"
        args = ["record", "device=lerobot", f"output={root}", "single_task=wave", "fps=15", "episode_s=1",
                "reset_s=0.2", "arm.type=so101_follower", f"arm.port={follower_bus.port}", "arm.id=follower",
                f"arm.calibration_dir={tmp_path}", "arm.max_velocity=180", "teleop.type=so101_leader",
                f"teleop.port={leader_bus.port}", "teleop.id=leader", f"teleop.calibration_dir={tmp_path}"]
        try:
            assert cli.main([*args, "num_episodes=2"]) == 0
            assert cli.main([*args, "num_episodes=1"]) == 0
        finally:
            operator.close()
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "saved 2 episode(s) (now 2)" in out and "saved 1 episode(s) (now 3)" in out, out
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.fps == 15 and ds.num_frames == 45
    action, state = ds.column("action"), ds.column("observation.state")
    assert 10 < action[:, 0].max() <= 21 and -21 <= action[:, 0].min() < -10  # the leader's swing, in degrees
    assert np.corrcoef(action[:, 0], state[:, 0])[0, 1] > 0.8  # and the follower went with it


def test_record_device_lerobot_names_what_is_missing(tmp_path):
    from robopolicy import cli
    from robopolicy.configs import load_config

    with pytest.raises(ValueError, match=r"arm\.type=so101_follower.*teleop\.type=so101_leader"):
        cli.cmd_record(load_config("record", ["device=lerobot", f"output={tmp_path / 'x'}", "single_task=t"]))
    with pytest.raises(ValueError, match="single_task"):
        cli.cmd_record(load_config("record", ["device=lerobot", f"output={tmp_path / 'x'}", "teleop.type=so101_leader"]))
    assert not (tmp_path / "x").exists()  # nothing was created before the configuration was complete


def test_a_teleoperator_whose_actions_do_not_fit_the_robot_is_named_and_nothing_is_written(tmp_path):
    """LeRobot's keyboard and gamepad teleoperators give end-effector deltas; on a joint-space arm the recording
    stops at the first frame with both key sets named, and the dataset gets no partial episode."""
    from robopolicy.robots.lerobot_teleop import ScriptedTeleop

    with BusProcess() as follower_bus:
        (tmp_path / "follower.json").write_text(json.dumps(follower_bus.calibration))
        robot = LeRobotRobot(type="so101_follower", port=follower_bus.port, id="follower", calibration_dir=tmp_path)
        gamepad_like = ScriptedTeleop(["delta_x", "delta_y", "delta_z", "gripper"], lambda step: np.zeros(4))
        recorder = DatasetRecorder(tmp_path / "ds", fps=15, features=robot.features, robot_type="so101_follower")
        with robot, pytest.raises(ValueError, match=r"delta_x.*shoulder_pan\.pos.*missing"):
            record_leader_follower(robot, gamepad_like, recorder, fps=15, num_episodes=1, episode_s=1.0, task="t")
        recorder.close()
        assert recorder.num_episodes == 0
