"""Crazyflie driver against a fake cflib link (no radio, no hardware)."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.robots.crazyflie import LOG_BLOCKS, STATE_KEY, CrazyflieError, CrazyflieRobot


class Caller:
    def __init__(self):
        self.callbacks = []

    def add_callback(self, cb):
        self.callbacks.append(cb)

    def call(self, *args):
        for cb in list(self.callbacks):
            cb(*args)


class FakeLogConfig:
    def __init__(self, name, period_in_ms):
        self.name, self.period_in_ms = name, period_in_ms
        self.variables = []
        self.data_received_cb = Caller()
        self.started = False

    def add_variable(self, name, fetch_as="float"):
        self.variables.append(name)

    def start(self):
        self.started = True


class FakeCommander:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("send_"):
            return lambda *a: self.calls.append((name, a))
        raise AttributeError(name)


class FakeLog:
    def __init__(self):
        self.configs = []

    def add_config(self, lc):
        self.configs.append(lc)


class FakeParam:
    def __init__(self):
        self.values = {}

    def set_value(self, name, value):
        self.values[name] = value


class FakeCrazyflie:
    def __init__(self, fail: str | None = None):
        self.connected, self.disconnected = Caller(), Caller()
        self.connection_lost, self.connection_failed = Caller(), Caller()
        self.commander, self.log, self.param = FakeCommander(), FakeLog(), FakeParam()
        self.fail = fail
        self.uri = None
        self.closed = False

    def open_link(self, uri):
        self.uri = uri
        if self.fail:
            self.connection_failed.call(uri, self.fail)
        else:
            self.connected.call(uri)

    def close_link(self):
        self.closed = True
        self.disconnected.call(self.uri)

    def emit_state(self, state):
        for lc in self.log.configs:
            data = {var: float(state[idx]) for var, idx in LOG_BLOCKS[lc.name]}
            lc.data_received_cb.call(0, data, lc)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make(mode="position", **kw):
    fake, clock = FakeCrazyflie(), Clock()
    robot = CrazyflieRobot("radio://0/80/2M/E7E7E7E7E7", mode=mode, link_factory=lambda: fake,
                           log_config_factory=FakeLogConfig, clock=clock, start_thread=False, **kw)
    robot.connect()
    return robot, fake, clock


STATE = np.array([0.1, 0.2, 1.0, 1.0, 2.0, 30.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5])


def test_connect_logs_and_state():
    robot, fake, clock = make()
    assert fake.uri.startswith("radio://") and all(lc.started for lc in fake.log.configs)
    assert robot.read_state() is None  # no log data yet
    fake.emit_state(STATE)
    s = robot.read_state()
    assert s is not None and s.seq == 1
    np.testing.assert_allclose(s.observation[STATE_KEY], STATE, rtol=1e-6)


def test_streams_latest_command_clipped():
    robot, fake, clock = make()
    fake.emit_state(STATE)
    assert robot.tick() == "idle" and fake.commander.calls == []
    robot.send_command(np.array([0.5, 0.0, 9.0, 0.0]))  # z clipped to 2 m
    assert robot.tick() == "command"
    assert fake.commander.calls[-1] == ("send_position_setpoint", (0.5, 0.0, 2.0, 0.0))
    clock.t += 0.05
    robot.tick()  # re-sent while fresh
    assert len(fake.commander.calls) == 2
    with pytest.raises(ValueError):
        robot.send_command(np.array([np.nan, 0, 0, 0]))


def test_command_timeout_lands_then_stops():
    robot, fake, clock = make(on_timeout="land", land_speed=1.0, control_hz=100)
    fake.emit_state(STATE)
    robot.send_command(np.array([0.0, 0.0, 1.0, 0.0]))
    robot.tick()
    clock.t += 0.25  # > 200 ms without a new command
    fake.emit_state(STATE)
    assert robot.tick() == "landing"
    name, args = fake.commander.calls[-1]
    assert name == "send_position_setpoint" and args[2] < 1.0 and args[:2] == (0.1, 0.2)
    robot.send_command(np.array([0.0, 0.0, 1.5, 0.0]))  # ignored once the safety stop engaged
    outcomes = [robot.tick() for _ in range(200)]
    assert "stopped" in outcomes and fake.commander.calls[-1][0] == "send_stop_setpoint"
    assert any("no command" in e for e in robot.events)


def test_cut_on_timeout_and_stale_state():
    robot, fake, clock = make(on_timeout="cut")
    fake.emit_state(STATE)
    robot.send_command(np.zeros(4) + [0, 0, 1, 0])
    clock.t += 0.1
    robot.send_command(np.zeros(4) + [0, 0, 1, 0])
    clock.t += 0.6  # log data stale (> 0.5 s) and command stale
    assert robot.tick() == "stopped"
    assert fake.commander.calls[-1][0] == "send_stop_setpoint"


def test_motor_mode_and_disconnect():
    robot, fake, clock = make(mode="motors")
    assert fake.param.values["motorPowerSet.enable"] == "1"
    fake.emit_state(STATE)
    robot.send_command(np.array([-1.0, 0.0, 1.0, 2.0]))
    robot.tick()
    assert [fake.param.values[f"motorPowerSet.m{i}"] for i in range(1, 5)] == ["0", "32768", "65535", "65535"]
    fake.connection_lost.call(fake.uri, "radio gone")
    assert robot.read_state() is None and robot.tick() == "disconnected"
    robot.disconnect()
    assert fake.closed


def test_connection_failure_raises():
    fake = FakeCrazyflie(fail="no radio")
    robot = CrazyflieRobot(link_factory=lambda: fake, log_config_factory=FakeLogConfig, start_thread=False)
    with pytest.raises(CrazyflieError, match="no radio"):
        robot.connect()


def test_streaming_thread_runs_and_stops():
    import time

    fake = FakeCrazyflie()
    robot = CrazyflieRobot(link_factory=lambda: fake, log_config_factory=FakeLogConfig, control_hz=200)
    robot.connect()
    fake.emit_state(STATE)
    robot.send_command(np.array([0.0, 0.0, 0.5, 0.0]))
    time.sleep(0.1)
    robot.disconnect()
    sent = [c for c in fake.commander.calls if c[0] == "send_position_setpoint"]
    assert len(sent) >= 5
    assert fake.commander.calls[-1][0] == "send_notify_setpoint_stop" and fake.closed
