"""Leader-follower recording through LeRobot's drivers: a scripted operator moves a simulated SO-101 leader,
the simulated follower copies it, and robopolicy's recorder writes (and resumes) a LeRobot v3.0 dataset."""

from __future__ import annotations

import json
import math

import lerobot  # noqa: F401  (installed by `make test`; a missing one fails)
import mujoco  # noqa: F401  (installed by `make test`; a missing one fails)
import numpy as np
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
