"""Angle wrap (issue 27, item 8): yaw at ±180° in interpolation, chunk blending and the safety filter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robopolicy.deploy.client import ControlLoop, ControlLoopConfig
from robopolicy.deploy.fake import RampPolicy, ramp_spec
from robopolicy.deploy.interpolation import Waypoints, blend, interpolate, weighted_mean, wrap_angle
from robopolicy.deploy.safety import SafetyFilter
from robopolicy.deploy.scheduling import ChunkScheduler
from robopolicy.deploy.server import PolicyServer
from robopolicy.robots.base import EchoRobot, RobotSpec

DEG = math.pi / 180


def test_interpolation_crosses_pi_the_short_way():
    times = np.array([0.0, 1.0])
    actions = np.array([[179 * DEG, 5.0], [-179 * DEG, 7.0]])
    mid = interpolate(times, actions, 0.5, angle_dims=[0])
    assert abs(abs(mid[0]) - math.pi) < 1e-9 and mid[1] == 6.0  # through 180°, not 0°
    quarter = interpolate(times, actions, 0.25, angle_dims=[0])
    assert quarter[0] == pytest.approx(179.5 * DEG)
    three_quarters = interpolate(times, actions, 0.75, angle_dims=[0])
    assert three_quarters[0] == pytest.approx(-179.5 * DEG)
    # without the declaration the old behaviour: through 0
    assert interpolate(times, actions, 0.5)[0] == pytest.approx(0.0)
    # held values and unwrapped policy outputs come back wrapped
    wp = Waypoints(times, np.array([[3.5 * math.pi, 0.0], [3.6 * math.pi, 0.0]]), 0.1, angle_dims=[0])
    assert -math.pi <= wp(1.05)[0] < math.pi and wp(1.05)[0] == pytest.approx(-0.4 * math.pi)


def test_degrees_and_blends():
    assert wrap_angle(190.0, 360.0) == pytest.approx(-170.0)
    assert blend(np.array([170.0]), np.array([-170.0]), 0.5, [0], 360.0)[0] == pytest.approx(-180.0)
    mean = weighted_mean([np.array([179 * DEG, 1.0]), np.array([-179 * DEG, 3.0])], np.ones(2), [0])
    assert abs(abs(mean[0]) - math.pi) < 1e-9 and mean[1] == 2.0


def test_ensemble_of_chunks_on_either_side_of_pi():
    sched = ChunkScheduler(1, 2, 2, dt=0.1, mode="ensemble", validity_s=1.0, angle_dims=(0,))
    sched.add_chunk(np.array([[179 * DEG], [179 * DEG]]), t_first=0.0, now=0.0)
    sched.add_chunk(np.array([[-179 * DEG], [-179 * DEG]]), t_first=0.0, now=0.0)
    value, _ = sched.target(0.05)
    assert abs(abs(value[0]) - math.pi) < 1e-3


def test_safety_filter_limits_velocity_the_short_way_round():
    f = SafetyFilter(np.array([-math.pi]), np.array([math.pi]), max_velocity=1.0, angle_dims=(0,))
    f.reset(np.array([179 * DEG]))
    cmd = f(np.array([-179 * DEG]), 0.01)  # 2° away through ±180°, more than the 0.01 rad step allows
    step = wrap_angle(cmd[0] - 179 * DEG)
    assert step == pytest.approx(0.01)  # +0.01 rad toward 180°, not -0.01 toward 0
    for _ in range(10):
        cmd = f(np.array([-179 * DEG]), 0.01)
    assert -math.pi <= cmd[0] < math.pi and abs(wrap_angle(cmd[0] - (-179 * DEG))) < 1e-9
    old = SafetyFilter(np.array([-math.pi]), np.array([math.pi]), max_velocity=1.0)
    old.reset(np.array([179 * DEG]))
    assert old(np.array([-179 * DEG]), 0.01)[0] < 179 * DEG  # undeclared: the long way


def test_robot_spec_declares_angle_dims():
    with pytest.raises(ValueError, match="angle_dims"):
        RobotSpec("r", 2, [0, 0], [1, 1], angle_dims=(2,))
    with pytest.raises(ValueError, match="angle_period"):
        RobotSpec("r", 2, [0, 0], [1, 1], angle_dims=(1,), angle_period=0.0)
    from robopolicy.robots.crazyflie import CrazyflieRobot

    spec = CrazyflieRobot(mode="position", start_thread=False).spec
    assert spec.angle_dims == (3,) and spec.angle_period == 360.0


def test_control_loop_turns_through_pi_without_a_jump(tmp_path):
    """A yaw ramping at 10 rad/s from 3.0: the robot goes through ±π smoothly (the old loop clipped it at π)."""
    robot = EchoRobot(dim=2, hz=50.0, low=-math.pi, high=math.pi, start=np.array([3.0, 0.0]), angle_dims=(0,),
                      max_velocity=[15.0, 15.0])
    with PolicyServer(RampPolicy(ramp_spec(), step=1.0), address=f"ipc://{tmp_path}/a.ipc", status_every_s=0) as srv:
        with robot:
            loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100.0, watchdog_s=0.3))
            try:
                loop.run(1.0)
            finally:
                loop.close()
    yaw = np.array([c[0] for _, c in robot.commands])
    assert np.all((-math.pi <= yaw) & (yaw < math.pi))
    steps = wrap_angle(np.diff(yaw))
    assert np.all(np.abs(steps) <= 15.0 * 0.01 + 1e-6)  # the velocity limit, measured the short way
    assert (np.diff(yaw) < -math.pi).any(), "the yaw crossed +π to -π"
    assert np.sum(steps) > 2.0  # and kept turning the same way
