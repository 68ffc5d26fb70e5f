"""LeRobot robots behind robopolicy's robot interface, on the simulated SO-101 bus.

The robot is LeRobot's unmodified ``SO101Follower`` (``FeetechMotorsBus`` + Feetech SDK + pyserial),
talking to simulated STS3215 servos through a pseudo-terminal; only the servos are simulated.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import lerobot  # noqa: F401  (installed by `make test`; a missing one fails)
import mujoco  # noqa: F401  (installed by `make test`; a missing one fails)
import numpy as np
import pytest
import scservo_sdk  # noqa: F401  (installed by `make test`; a missing one fails)

from robopolicy.deploy.client import ControlLoop, ControlLoopConfig  # noqa: E402
from robopolicy.deploy.fake import RampPolicy, ramp_spec  # noqa: E402
from robopolicy.deploy.server import start_server_process  # noqa: E402
from robopolicy.robots import make_robot  # noqa: E402
from robopolicy.robots.feetech_sim import (  # noqa: E402
    HOMING_OFFSET,
    SO101_RAW_AT_ZERO,
    BusProcess,
    FeetechBusSimulator,
    apply_calibration,
    so101_calibration,
)
from robopolicy.robots.lerobot_robot import LeRobotRobot  # noqa: E402
from robopolicy.sim.so101 import JOINTS  # noqa: E402
from tests.conftest import ipc_address  # noqa: E402

NAMES = [f"{j}.pos" for j in JOINTS]


def make_so101_ramp(step: float = 1.0) -> RampPolicy:
    """A policy server's model for the 6 SO-101 joints: keep moving every joint by ``step`` per policy step."""
    return RampPolicy(ramp_spec(n_obs_steps=2, horizon=16, n_action_steps=8, fps=10.0, dim=6), step=step)


def write_calibration(directory, calibration: dict, robot_id: str = "sim_arm") -> None:
    (directory / f"{robot_id}.json").write_text(json.dumps(calibration))


@pytest.fixture
def calibrated_bus(tmp_path):
    with FeetechBusSimulator(raw_at_zero=SO101_RAW_AT_ZERO) as bus:
        cal = so101_calibration(bus)
        apply_calibration(bus, cal)
        write_calibration(tmp_path, cal)
        yield bus, cal, tmp_path


def follower(bus, directory, **kw) -> LeRobotRobot:
    return make_robot("lerobot", type="so101_follower", port=bus.port, id="sim_arm", calibration_dir=directory, **kw)


def test_unknown_type_and_bad_field_are_named():
    with pytest.raises(ValueError, match=r"unknown LeRobot robot type 'so101_folower'.*so101_follower"):
        LeRobotRobot(type="so101_folower", port="/dev/null")
    with pytest.raises(ValueError, match="so101_follower.*baudrate"):
        LeRobotRobot(type="so101_follower", port="/dev/null", baudrate=3)


def test_features_observation_and_limits_from_calibration(calibrated_bus):
    bus, cal, directory = calibrated_bus
    robot = follower(bus, directory)
    assert robot.state_names == NAMES and robot.action_names == NAMES
    assert robot.features["observation.state"] == {"dtype": "float32", "shape": (6,), "names": NAMES}
    assert robot.features["action"]["names"] == NAMES
    # DEGREES for the body (0 at mid-range, 4095 ticks = 360 degrees), 0..100 for the gripper
    for i, name in enumerate(JOINTS[:-1]):
        c = cal[name]
        half = (c["range_max"] - c["range_min"]) / 2 * 360 / 4095
        assert math.isclose(robot.spec.action_low[i], -half) and math.isclose(robot.spec.action_high[i], half)
    assert (robot.spec.action_low[-1], robot.spec.action_high[-1]) == (0.0, 100.0)
    with robot:
        state = robot.read_state()
        obs = state.observation["observation.state"]
        assert obs.dtype == np.float32 and obs.shape == (6,)
        q = bus.joint_positions()
        for i, name in enumerate(JOINTS[:-1]):
            mid = (cal[name]["range_min"] + cal[name]["range_max"]) / 2
            expected = (bus.servos[i + 1].present_from_angle(q[i]) - mid) * 360 / 4095
            assert abs(obs[i] - expected) < 1.0, name  # the arm moves a little between the two reads
        np.testing.assert_allclose(robot.hold_action(state), obs, atol=1e-4)


def test_every_command_is_limited_before_it_reaches_the_bus(calibrated_bus):
    bus, cal, directory = calibrated_bus
    with follower(bus, directory, max_velocity=60.0, control_hz=30.0) as robot:
        start = robot.read_state().observation["observation.state"].astype(np.float64)
        target = start.copy()
        target[0] = 1e4  # far beyond the pan joint's calibrated range
        robot.send_command(target)
        time.sleep(1.0)
        robot.send_command(np.full(6, np.nan))  # not finite: never sent, the last command stays
        time.sleep(0.3)
        sent = list(robot.sent)
    t = np.array([s[0] for s in sent])
    a = np.stack([s[1] for s in sent])
    assert np.isfinite(a).all()
    assert a[:, 0].max() <= robot.spec.action_high[0] + 1e-9
    speed = np.abs(np.diff(a[:, 0])) / np.diff(t)
    assert speed.max() <= 60.0 * 1.01, speed.max()
    assert a[-1, 0] > start[0] + 30  # it did move towards the target, at the limited speed
    assert robot.filter.rejected >= 1
    # the servo got goals inside its own limits too
    servo = bus.servos[1]
    assert cal["shoulder_pan"]["range_min"] <= servo.get(42, 2) <= cal["shoulder_pan"]["range_max"]


@pytest.mark.parametrize("sync_io", [True, False])
def test_sync_io_reads_on_the_callers_tick_and_sends_at_once(calibrated_bus, sync_io):
    """A slow driver (2 Hz) makes the difference plain: with ``sync_io`` an observation is fresh when read and a
    command reaches the bus within milliseconds; without, both wait for the driver's period (up to 500 ms)."""
    bus, cal, directory = calibrated_bus
    bus.log_goals = True
    ages, delays = [], []
    with follower(bus, directory, control_hz=2.0, max_velocity=None, sync_io=sync_io) as robot:
        hold = robot.read_state().observation["observation.state"].astype(np.float64)
        for k in range(4):
            time.sleep(0.13)  # off the driver's grid
            state = robot.read_state()
            ages.append(time.monotonic() - state.t)
            goal = hold.copy()
            goal[0] += 2.0 * (k + 1)
            n_before = len(bus.goal_log)
            t_sent = time.monotonic()
            robot.send_command(goal)
            deadline = t_sent + 1.0
            while len(bus.goal_log) == n_before and time.monotonic() < deadline:
                time.sleep(0.002)
            delays.append(bus.goal_log[-1][0] - t_sent if len(bus.goal_log) > n_before else math.inf)
    if sync_io:
        assert max(ages) < 0.05, ages
        assert max(delays) < 0.05, delays
    else:  # 4 tries 130 ms apart land on every part of a 500 ms period: some wait far longer
        assert max(ages) > 0.1 or max(delays) > 0.1, (ages, delays)


def test_missing_calibration_file_is_a_clear_error(tmp_path):
    with FeetechBusSimulator(raw_at_zero=SO101_RAW_AT_ZERO) as bus:
        robot = follower(bus, tmp_path)
        with pytest.raises(RuntimeError, match="lerobot-calibrate --robot.type=so101_follower"):
            robot.connect()
        assert not robot.robot.is_connected


def test_a_stored_calibration_is_written_to_factory_fresh_motors(tmp_path):
    with FeetechBusSimulator(raw_at_zero=SO101_RAW_AT_ZERO) as bus:
        cal = so101_calibration(bus)  # not applied: the servos have factory EEPROM
        write_calibration(tmp_path, cal)
        assert bus.servos[3].get(HOMING_OFFSET, 2) == 0
        with follower(bus, tmp_path) as robot, robot.bus_lock:
            assert robot.robot.is_calibrated
            assert bus.servos[3].homing_offset == cal["elbow_flex"]["homing_offset"]


def test_a_dead_bus_is_a_fault_and_disconnect_still_closes_the_port(calibrated_bus):
    bus, _, directory = calibrated_bus
    robot = follower(bus, directory, max_bus_errors=2)
    robot.connect()
    try:
        for i in bus.servos:
            bus.mute(i)
        deadline = time.monotonic() + 10
        while robot.fault is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert robot.fault is not None and "bus failed" in robot.fault
        with pytest.raises(RuntimeError, match="bus failed"):
            robot.send_command(np.zeros(6))
    finally:
        robot.disconnect()
    assert not robot.robot.bus.port_handler.is_open


@pytest.fixture(scope="module")
def bus_process():
    with BusProcess(seed=0) as proc:
        yield proc


def served_run(bus_process, tmp_path, address, kill_after_s: float | None = None, duration_s: float = 3.0,
               probe=None, robot_ref=None):
    """``robopolicy serve`` (a ramp policy) + the control loop driving the LeRobot SO-101 on the simulated bus;
    ``probe()`` runs after the loop ends, while the arm is still connected and holding its last command."""
    write_calibration(tmp_path, bus_process.calibration)
    server = start_server_process(make_so101_ramp, address, {}, max_runtime_s=60, status_every_s=0)
    robot = follower(bus_process, tmp_path, control_hz=30.0)
    if robot_ref is not None:
        robot_ref.append(robot)
    t_kill = None
    with robot:
        loop = ControlLoop(robot, address, ControlLoopConfig(control_hz=100, watchdog_s=0.1))
        stop = threading.Event()
        result: dict = {}
        th = threading.Thread(target=lambda: result.update(loop.run(duration_s, stop_event=stop)), daemon=True)
        th.start()
        try:
            if kill_after_s is not None:
                time.sleep(kill_after_s)
                bus_process.call("log_goals", True)
                t_kill = time.monotonic()
                os.kill(server.pid, signal.SIGKILL)
                server.join(5)
            th.join(duration_s + 10)
            if probe is not None:
                probe()
        finally:
            stop.set()
            loop.close()
            if server.is_alive():
                server.kill()
        start_obs = robot.sent[0][1] if robot.sent else None
    return loop, result, robot, start_obs, t_kill


def test_served_episode_through_the_lerobot_driver(bus_process, tmp_path):
    q0 = bus_process.call("joints")
    end = {}

    def probe():
        end["q"] = bus_process.call("joints")
        end["obs"] = robot_ref[0].read_state().observation["observation.state"]

    robot_ref = []
    loop, result, robot, _, _ = served_run(bus_process, tmp_path, ipc_address("so101"), duration_s=3.0,
                                           probe=probe, robot_ref=robot_ref)
    assert result["fatal"] is None, result
    assert result["chunks"] >= 3, result  # one chunk per 0.8 s (8 actions at 10 fps)
    policy = [r for r in loop.commands if r.mode == "policy"]
    assert len(policy) > 100
    q1 = end["q"]
    print("end obs", end["obs"], "q", np.degrees(q1))
    first, last = robot.sent[0][1], robot.sent[-1][1]
    print(f"served: {result['chunks']} chunks, latency p50 {result['latency_ms_p50']:.1f} ms; pan command "
          f"{first[0]:.1f} -> {last[0]:.1f} deg, joint {math.degrees(q0[0]):.1f} -> {math.degrees(q1[0]):.1f} deg")
    # the ramp policy moves every joint up; the pan joint went with it, through LeRobot and the servos
    assert last[0] - first[0] > 3
    assert math.degrees(q1[0] - q0[0]) > 3, (q0, q1)


def test_kill_minus_9_of_the_server_holds_the_arm_and_sends_nothing_stale(bus_process, tmp_path):
    held = []

    def probe():  # the arm's joint angles 0.5 s apart, still holding
        held.append(bus_process.call("joints"))
        time.sleep(0.5)
        held.append(bus_process.call("joints"))

    loop, result, robot, _, t_kill = served_run(bus_process, tmp_path, ipc_address("so101k"), kill_after_s=1.5,
                                                duration_s=3.5, probe=probe)
    recs = loop.commands
    after = [r for r in recs if r.t > t_kill]
    first_safe = next(r for r in after if r.mode != "policy")
    delay = first_safe.t - t_kill
    print(f"hold {delay * 1e3:.1f} ms after kill -9")
    assert delay <= 0.1 + 0.01 + 0.1, delay  # watchdog + one tick + scheduling slack on a loaded CPU
    assert all(r.mode != "policy" for r in after if r.t >= first_safe.t)  # the dead link's chunks never run
    hold = first_safe.command
    assert hold is not None and all(np.array_equal(r.command, hold) for r in after if r.t >= first_safe.t)
    # on the bus: after the hold reached it (one driver period + the velocity-limited step), every goal
    # written is the same, so no action planned before the kill arrived later
    goals = [(t, g) for t, g in bus_process.call("goal_log") if t > first_safe.t + 0.2]
    assert len(goals) > 20
    assert all(g == goals[0][1] for _, g in goals), goals[:3]
    # and the arm stays there, torque on
    assert np.abs(np.degrees(held[1] - held[0])).max() < 1.0, held


def test_extra_observation_rides_along_and_needs_its_features(calibrated_bus):
    bus, _, directory = calibrated_bus
    feature = {"observation.environment_state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]}}
    with pytest.raises(ValueError, match="go together"):
        follower(bus, directory, extra_observation=lambda: {})
    robot = follower(bus, directory, extra_features=feature,
                     extra_observation=lambda: {"observation.environment_state": np.array([1, 2, 3], np.float32)})
    assert "observation.environment_state" in robot.spec.observation_keys
    assert robot.features["observation.environment_state"] == feature["observation.environment_state"]
    with robot:
        obs = robot.read_state().observation
    np.testing.assert_array_equal(obs["observation.environment_state"], [1, 2, 3])


def test_ctrl_c_in_the_control_loop_holds_then_disconnects_with_torque_off(calibrated_bus):
    bus, _, directory = calibrated_bus
    robot = follower(bus, directory)
    ticks = []

    def operator_presses_ctrl_c(loop, record):
        ticks.append(record)
        if len(ticks) == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with robot:  # as `robopolicy run` holds it
            assert all(s.get(40, 1) == 1 for s in bus.servos.values())  # torque on while driven
            loop = ControlLoop(robot, ipc_address("nobody"), ControlLoopConfig(control_hz=100))
            try:
                loop.run(10.0, on_tick=operator_presses_ctrl_c)
            finally:
                loop.close()
    assert loop.fatal.startswith("crashed: KeyboardInterrupt")
    assert all(r.mode == "safe" for r in ticks)  # no server: the hold from the first tick on
    hold = ticks[0].command
    assert all(np.array_equal(r.command, hold) for r in ticks)
    assert not robot.robot.is_connected
    assert all(s.get(40, 1) == 0 for s in bus.servos.values())  # LeRobot's disconnect disabled torque


def test_robopolicy_run_robot_lerobot_from_the_cli(bus_process, tmp_path, capsys):
    """The command a user types: ``robopolicy run robot=lerobot robot.type=so101_follower robot.port=...`` against
    a served policy, through the CLI's entry point, LeRobot's driver and the simulated bus."""
    from robopolicy import cli

    write_calibration(tmp_path, bus_process.calibration)
    address = ipc_address("so101_cli")
    server = start_server_process(make_so101_ramp, address, {}, max_runtime_s=60, status_every_s=0)
    q0 = bus_process.call("joints")
    try:
        capsys.readouterr()
        rc = cli.main(["run", "robot=lerobot", "robot.type=so101_follower", f"robot.port={bus_process.port}",
                       "robot.id=sim_arm", f"robot.calibration_dir={tmp_path}", "robot.max_velocity=360",
                       "robot.max_relative_target=30", "robot.disable_torque_on_disconnect=true",
                       f"server={address}", "duration_s=2.5", "control_hz=100", "interpolation=hold"])
    finally:
        server.kill()
        server.join(5)
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out[out.index("{"):])
    assert summary["fatal"] is None and summary["chunks"] >= 2, summary
    q1 = bus_process.call("joints")
    assert math.degrees(q1[0] - q0[0]) > 2, (q0, q1)  # the ramp turned the pan joint through the real driver


PLUGIN_CONFIG = '''
from dataclasses import dataclass

from lerobot.robots import RobotConfig
from lerobot.robots.so_follower.config_so_follower import SOFollowerConfig


@RobotConfig.register_subclass("my_arm")
@dataclass
class MyArmConfig(RobotConfig, SOFollowerConfig):
    pass
'''
PLUGIN_ROBOT = '''
from lerobot.robots.so_follower.so_follower import SOFollower

from .config_my_arm import MyArmConfig


class MyArm(SOFollower):
    config_class = MyArmConfig
    name = "my_arm"
'''
PLUGIN_DRIVE = '''
import json, sys, time
import numpy as np
from robopolicy.robots.lerobot_robot import LeRobotRobot

port, calibration_dir = sys.argv[1:3]
robot = LeRobotRobot(type="my_arm", port=port, id="follower", calibration_dir=calibration_dir, control_hz=30.0)
with robot:
    start = robot.read_state().observation["observation.state"].astype(float)
    target = start.copy()
    target[0] += 15.0
    for _ in range(60):
        robot.send_command(target)
        time.sleep(1 / 30)
    end = robot.read_state().observation["observation.state"].astype(float)
print(json.dumps({"class": type(robot.robot).__module__ + "." + type(robot.robot).__name__,
                  "names": robot.action_names, "start": start.tolist(), "end": end.tolist()}))
'''


def test_a_plugin_robot_is_driven_with_no_code_of_ours(bus_process, tmp_path):
    """A ``lerobot_robot_*`` distribution installed in the environment (here: on the path, with its dist-info) is
    found by LeRobot's own plugin discovery when robopolicy imports LeRobot, and drives the simulated arm by its
    type name alone; robopolicy has no line about it."""
    site = tmp_path / "site"
    package = site / "lerobot_robot_my_arm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .config_my_arm import MyArmConfig\nfrom .my_arm import MyArm\n")
    (package / "config_my_arm.py").write_text(PLUGIN_CONFIG)
    (package / "my_arm.py").write_text(PLUGIN_ROBOT)
    info = site / "lerobot_robot_my_arm-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lerobot_robot_my_arm\nVersion: 0.1.0\n")
    (tmp_path / "follower.json").write_text(json.dumps(bus_process.calibration))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PLUGIN_DRIVE, bus_process.port, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["class"] == "lerobot_robot_my_arm.my_arm.MyArm"
    assert result["names"][0] == "shoulder_pan.pos" and result["names"][-1] == "gripper.pos"
    assert result["end"][0] - result["start"][0] > 10  # the pan joint followed the 15-degree command
