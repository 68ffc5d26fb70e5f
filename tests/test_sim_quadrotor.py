"""The simulated Crazyflie robot (500 Hz, own process): safe modes, command watchdog, bad commands, resets."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("l2f", reason="L2F not installed (pip install l2f: an sdist, builds with gcc)")

from robopolicy.robots.sim_quadrotor import SimQuadrotorRobot  # noqa: E402

STATE_KEY = "observation.state"


def _position(robot: SimQuadrotorRobot) -> np.ndarray:
    return np.asarray(robot.read_state().observation[STATE_KEY][0:3], dtype=np.float64)


def _wait(robot: SimQuadrotorRobot, seconds: float, command: np.ndarray | None = None, hz: float = 250.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if command is not None:
            robot.send_command(command)
        robot.read_state()
        time.sleep(1.0 / hz)


def _connected(command_timeout_s: float):
    robot = SimQuadrotorRobot("waypoint", seed=0, episode_s=30.0, command_timeout_s=command_timeout_s, max_runtime_s=60)
    robot.connect()
    yield robot
    robot.disconnect()


@pytest.fixture
def drone():
    yield from _connected(0.05)


@pytest.fixture
def stopped_drone():
    """A drone whose first safe-mode entry is the test's own stop(): with a 50 ms watchdog, a loaded machine can
    pause the test longer than that between connect() and stop(), and the watchdog (rightly) trips first."""
    yield from _connected(5.0)


def test_publishes_at_500_hz_and_holds_position_in_hover_safe_mode(stopped_drone):
    drone = stopped_drone
    s0 = drone.read_state()
    assert s0.observation[STATE_KEY].shape == (22,) and drone.spec.control_hz == 500 and drone.spec.safe_action == "stop"
    p0 = _position(drone)
    drone.stop()
    _wait(drone, 3.0)
    s1 = drone.read_state()
    # stamps advance one period per tick, more only after an overrun (no catching up): never above 500 Hz. The
    # stamps are sums of periods on a monotonic clock at ~1e4-1e5 s, so 1,500 additions round by up to ~1e-8 s.
    assert (s1.t - s0.t) >= (s1.seq - s0.seq) / 500 - 1e-6
    if s1.info["overruns"] == 0:
        assert (s1.t - s0.t) == pytest.approx((s1.seq - s0.seq) / 500, abs=1e-6)
    assert s1.info["late_p99_us"] >= s1.info["late_p50_us"] >= 0
    assert s1.info["safe"] == "stop" and not s1.info["crash"]
    assert s1.info["steps"] > 1000
    # hovering where safe mode began (it started slightly tilted and moving: the SE(3) hold overshoots ~0.1 m)
    assert np.linalg.norm(_position(drone) - p0) < 0.15
    assert np.linalg.norm(drone.read_state().observation[STATE_KEY][12:15]) < 0.1


def test_watchdog_enters_safe_mode_when_commands_stop_and_policy_command_leaves_it(drone):
    hover = np.full(4, -0.2)
    _wait(drone, 0.2, hover)
    assert drone.read_state().info["watchdog_trips"] == 0 and drone.read_state().info["safe"] == ""
    _wait(drone, 0.3)  # silence > command_timeout_s
    info = drone.read_state().info
    assert info["watchdog_trips"] == 1 and info["safe"] == "watchdog" and not info["crash"]
    _wait(drone, 0.05, hover)
    assert drone.read_state().info["safe"] == ""


def test_bad_commands_are_ignored(stopped_drone):
    drone = stopped_drone
    drone.stop()
    _wait(drone, 0.1)
    drone._send(["cmd", [float("nan")] * 4])
    drone._send(["cmd", [0.0, 0.0]])
    drone._send(["bogus"])
    _wait(drone, 0.2)
    info = drone.read_state().info
    assert info["safe"] == "stop" and not info["crash"]  # still hovering in safe mode, not acting on garbage


def test_motors_off_safe_mode_falls_and_reset_starts_a_new_episode():
    robot = SimQuadrotorRobot("waypoint", seed=0, episode_s=30.0, safe_mode="motors_off", max_runtime_s=60)
    robot.connect()
    try:
        z0 = _position(robot)[2]
        robot.stop()
        _wait(robot, 0.3)
        state = robot.read_state()
        assert state.info["safe"] == "stop" and _position(robot)[2] < z0 - 0.1  # falling (rotors spin down in ~0.25 s)
        deadline = time.monotonic() + 3.0
        while not robot.read_state().info["done"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert robot.read_state().info["crash"] and robot.read_state().info["crash_reason"] == "ground"
        first = robot.reset(seed=5)
        assert first.info["episode"] == 1 and not first.info["done"] and first.info["seed"] == 5
    finally:
        robot.disconnect()
    with pytest.raises(ValueError, match="safe_mode"):
        SimQuadrotorRobot(safe_mode="land_softly")
