"""The simulated SO-101 follower as LeRobot's driver sees it: one helper for every route that drives it (recording
through the driver, deployment, tests), so they all start an episode the same way a person would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from robopolicy.robots.lerobot_robot import LeRobotRobot
from robopolicy.sim.so101 import HOME
from robopolicy.sim.so101_pick import CONTROL_HZ, ENV_STATE_KEY, SO101PickEnv, features, from_units, to_units


def simulated_follower(bus, calibration_dir: Path, cube_observation: bool = False,
                       max_velocity: float | None = 180.0, sync_io: bool = True) -> LeRobotRobot:
    """``SO101Follower`` on ``bus`` (a :class:`~robopolicy.robots.feetech_sim.BusProcess`), calibrated with the
    bus's own file; ``cube_observation`` adds the simulated cube position (what a camera would give a real arm)."""
    calibration_dir = Path(calibration_dir)
    (calibration_dir / "sim_arm.json").write_text(json.dumps(bus.calibration))
    extra = {}
    if cube_observation:
        extra = dict(extra_observation=lambda: {ENV_STATE_KEY: np.asarray(bus.call("cube"), dtype=np.float32)},
                     extra_features={ENV_STATE_KEY: features()[ENV_STATE_KEY]})
    return LeRobotRobot(type="so101_follower", port=bus.port, id="sim_arm", calibration_dir=calibration_dir,
                        control_hz=CONTROL_HZ, max_velocity=max_velocity, sync_io=sync_io, **extra)


def bring_to_start(robot: LeRobotRobot, sim_env: SO101PickEnv, settle_s: float = 2.0) -> np.ndarray:
    """The arm powers on limp and sags: move it to the env's start pose first, like an operator; returns where it
    really is then (joint angles in radians)."""
    low, high = sim_env.sim.joint_low, sim_env.sim.joint_high
    robot.send_command(to_units(HOME, low, high))
    time.sleep(settle_s)
    return from_units(robot.read_state().observation["observation.state"], low, high)


__all__ = ["bring_to_start", "simulated_follower"]
