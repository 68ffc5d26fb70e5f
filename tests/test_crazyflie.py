"""Crazyflie driver against cflib's real classes, mocked with ``create_autospec`` (no radio, no hardware): a
misspelt cflib method or a wrong argument list fails here as it would on the drone."""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import call, create_autospec

import cflib  # noqa: F401  (the quadrotor extra is part of `make test`: missing, it must fail)
import numpy as np
import pytest
from cflib.crazyflie import Crazyflie  # noqa: E402
from cflib.crazyflie.commander import Commander  # noqa: E402
from cflib.crazyflie.log import Log, LogConfig  # noqa: E402
from cflib.crazyflie.param import Param  # noqa: E402
from cflib.utils.callbacks import Caller  # noqa: E402

from robopolicy.robots.crazyflie import (  # noqa: E402
    LOG_BLOCKS,
    STATE_KEY,
    CrazyflieError,
    CrazyflieRobot,
    default_cache_dir,
)

FIRMWARE_NAMES = json.loads((Path(__file__).resolve().parents[1]
                             / "hardware/crazyflie/firmware_types/firmware_names.json").read_text())


def fake_log_config(name, period_in_ms):
    """cflib's LogConfig, autospecced: add_variable/start with their real signatures; names checked against the
    firmware's log variables recorded from the pinned commit."""
    lc = create_autospec(LogConfig, instance=True)
    lc.name, lc.period_in_ms = name, period_in_ms
    lc.data_received_cb = Caller()

    def add_variable(var, fetch_as=None):
        assert var in FIRMWARE_NAMES["log"], f"{var} is not a log variable of the firmware"
    lc.add_variable.side_effect = add_variable
    return lc


def fake_crazyflie(fail: str | None = None):
    cf = create_autospec(Crazyflie, instance=True)
    cf.connected, cf.disconnected = Caller(), Caller()
    cf.connection_lost, cf.connection_failed = Caller(), Caller()
    cf.commander = create_autospec(Commander, instance=True)
    cf.log = create_autospec(Log, instance=True)
    cf.param = create_autospec(Param, instance=True)
    cf.param_values = {}

    def set_value(complete_name, value):
        assert complete_name in FIRMWARE_NAMES["param"], f"{complete_name} is not a firmware parameter"
        cf.param_values[complete_name] = value
    cf.param.set_value.side_effect = set_value
    cf.open_link.side_effect = lambda uri: (cf.connection_failed.call(uri, fail) if fail else cf.connected.call(uri))
    cf.close_link.side_effect = lambda: cf.disconnected.call("uri")
    return cf


def emit_state(cf, state):
    for (lc,), _ in cf.log.add_config.call_args_list:
        data = {var: float(state[idx]) for var, idx in LOG_BLOCKS[lc.name]}
        lc.data_received_cb.call(0, data, lc)


def commander_calls(cf):
    return [c for c in cf.commander.mock_calls if c[0].startswith("send_")]


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make(mode="position", **kw):
    cf, clock = fake_crazyflie(), Clock()
    robot = CrazyflieRobot("radio://0/80/2M/E7E7E7E7E7", mode=mode, link_factory=lambda: cf,
                           log_config_factory=fake_log_config, clock=clock, start_thread=False, **kw)
    robot.connect()
    return robot, cf, clock


STATE = np.array([0.1, 0.2, 1.0, 1.0, 2.0, 30.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5])


def test_fakes_are_bound_to_cflibs_signatures():
    cf = fake_crazyflie()
    with pytest.raises(TypeError):
        cf.commander.send_setpoint(0.0, 0.0, 0.0)  # thrust missing
    with pytest.raises(AttributeError):
        cf.commander.send_position_setpoints  # noqa: B018 - a misspelt method
    with pytest.raises(AssertionError, match="not a firmware parameter"):
        cf.param.set_value("motorPowerSet.m5", "0")


def test_connect_logs_and_state_with_right_handed_pitch():
    robot, cf, clock = make()
    assert cf.open_link.call_args == call("radio://0/80/2M/E7E7E7E7E7")
    configs = [c.args[0] for c in cf.log.add_config.call_args_list]
    assert len(configs) == len(LOG_BLOCKS) and all(lc.start.called for lc in configs)
    assert robot.read_state() is None  # no log data yet
    emit_state(cf, STATE)
    s = robot.read_state()
    assert s is not None and s.seq == 1
    expected = STATE.copy()
    expected[4] = -STATE[4]  # stabilizer.pitch is the legacy inverted pitch
    np.testing.assert_allclose(s.observation[STATE_KEY], expected, rtol=1e-6)


def test_position_mode_streams_latest_command_clipped():
    robot, cf, clock = make()
    emit_state(cf, STATE)
    assert robot.tick() == "idle" and commander_calls(cf) == []
    robot.send_command(np.array([0.5, 0.0, 9.0, 0.0]))  # z clipped to 2 m
    assert robot.tick() == "command"
    assert commander_calls(cf) == [call.send_position_setpoint(0.5, 0.0, 2.0, 0.0)]
    clock.t += 0.05
    robot.tick()  # re-sent while fresh
    assert len(commander_calls(cf)) == 2
    with pytest.raises(ValueError):
        robot.send_command(np.array([np.nan, 0, 0, 0]))


def test_velocity_mode_sends_world_velocity_setpoints():
    robot, cf, clock = make(mode="velocity")
    emit_state(cf, STATE)
    robot.send_command(np.array([0.2, -3.0, 0.1, 30.0]))  # vy clipped to -1 m/s
    robot.tick()
    assert commander_calls(cf) == [call.send_velocity_world_setpoint(0.2, -1.0, 0.1, 30.0)]
    np.testing.assert_array_equal(robot.hold_action(robot.read_state()), np.zeros(4))


def test_attitude_mode_releases_the_thrust_lock_once_per_start():
    robot, cf, clock = make(mode="attitude")
    emit_state(cf, STATE)
    robot.send_command(np.array([5.0, 3.0, 10.0, 30000.0]))
    robot.tick()
    robot.tick()
    # zero-thrust setpoint first (the RPYT commander's thrust lock), then the command with the legacy pitch sign
    assert commander_calls(cf) == [call.send_setpoint(0.0, 0.0, 0.0, 0), call.send_setpoint(5.0, -3.0, 10.0, 30000),
                                   call.send_setpoint(5.0, -3.0, 10.0, 30000)]
    robot.stop()
    robot.reset_safety()
    robot.send_command(np.array([0.0, 0.0, 0.0, 20000.0]))
    robot.tick()
    assert commander_calls(cf)[-3:] == [call.send_stop_setpoint(), call.send_setpoint(0.0, 0.0, 0.0, 0),
                                        call.send_setpoint(0.0, -0.0, 0.0, 20000)]
    assert FIRMWARE_NAMES["facts"]["rpyt_thrust_lock_released_by_zero_thrust"] == "values->thrust == 0"


def test_motors_mode_is_bench_only_and_every_stop_hands_the_motors_back():
    with pytest.raises(ValueError, match="propellers off"):
        CrazyflieRobot(mode="motors")
    robot, cf, clock = make(mode="motors", bench_props_off=True)
    names = [c.args[0] for c in cf.param.set_value.call_args_list]
    assert names == ["motorPowerSet.m1", "motorPowerSet.m2", "motorPowerSet.m3", "motorPowerSet.m4",
                     "motorPowerSet.enable"]  # zeroed before the override is enabled
    assert cf.param_values["motorPowerSet.enable"] == "1"
    emit_state(cf, STATE)
    robot.send_command(np.array([-1.0, 0.0, 1.0, 2.0]))
    robot.tick()
    assert [cf.param_values[f"motorPowerSet.m{i}"] for i in range(1, 5)] == ["0", "32768", "65535", "65535"]
    robot.stop()
    assert [cf.param_values[f"motorPowerSet.m{i}"] for i in range(1, 5)] == ["0"] * 4
    assert cf.param_values["motorPowerSet.enable"] == "0"
    assert commander_calls(cf)[-1] == call.send_stop_setpoint()


def test_motors_mode_timeout_disables_the_override():
    robot, cf, clock = make(mode="motors", bench_props_off=True, on_timeout="cut")
    emit_state(cf, STATE)
    robot.send_command(np.zeros(4))
    robot.tick()
    clock.t += 0.3
    assert robot.tick() == "stopped" and cf.param_values["motorPowerSet.enable"] == "0"


@pytest.mark.parametrize("mode", ["position", "velocity", "attitude"])
def test_link_loss_stops_the_stream_so_the_firmware_supervisor_cuts_the_motors(mode):
    robot, cf, clock = make(mode=mode)
    emit_state(cf, STATE)
    robot.send_command(np.array([0.0, 0.0, 0.5, 100.0]) if mode == "attitude" else np.array([0.0, 0.0, 0.5, 0.0]))
    robot.tick()
    sent = len(commander_calls(cf))
    cf.connection_lost.call("radio://0/80/2M/E7E7E7E7E7", "radio gone")
    for _ in range(5):
        clock.t += 0.01
        assert robot.tick() == "disconnected"
    assert len(commander_calls(cf)) == sent and robot.read_state() is None
    # the firmware's side (supervisor.c at the pinned commit): no setpoint for 2 s -> motors off
    assert FIRMWARE_NAMES["facts"]["commander_wdt_timeout_shutdown_ms"] == 2000


def test_motors_mode_link_loss_is_reported_as_unguarded():
    robot, cf, clock = make(mode="motors", bench_props_off=True)
    cf.connection_lost.call("radio://0/80/2M/E7E7E7E7E7", "radio gone")
    assert any("no watchdog" in e for e in robot.events)


def test_command_timeout_lands_then_stops():
    robot, cf, clock = make(on_timeout="land", land_speed=1.0, control_hz=100)
    emit_state(cf, STATE)
    robot.send_command(np.array([0.0, 0.0, 1.0, 0.0]))
    robot.tick()
    clock.t += 0.25  # > 200 ms without a new command
    emit_state(cf, STATE)
    assert robot.tick() == "landing"
    last = commander_calls(cf)[-1]
    assert last[0] == "send_position_setpoint" and last.args[2] < 1.0 and last.args[:2] == (0.1, 0.2)
    robot.send_command(np.array([0.0, 0.0, 1.5, 0.0]))  # ignored once the safety stop engaged
    outcomes = [robot.tick() for _ in range(200)]
    assert "stopped" in outcomes and commander_calls(cf)[-1] == call.send_stop_setpoint()
    assert any("no command" in e for e in robot.events)


def test_cut_on_timeout_and_stale_state():
    robot, cf, clock = make(on_timeout="cut")
    emit_state(cf, STATE)
    robot.send_command(np.zeros(4) + [0, 0, 1, 0])
    clock.t += 0.1
    robot.send_command(np.zeros(4) + [0, 0, 1, 0])
    clock.t += 0.6  # log data stale (> 0.5 s) and command stale
    assert robot.tick() == "stopped"
    assert commander_calls(cf)[-1] == call.send_stop_setpoint()


def test_connection_failure_raises():
    cf = fake_crazyflie(fail="no radio")
    robot = CrazyflieRobot(link_factory=lambda: cf, log_config_factory=fake_log_config, start_thread=False)
    with pytest.raises(CrazyflieError, match="no radio"):
        robot.connect()


def test_table_of_contents_cache_is_per_user_not_the_working_directory(tmp_path, monkeypatch):
    import cflib.crazyflie
    import cflib.crtp

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / "xdg/robopolicy/cflib"
    cls = create_autospec(Crazyflie)
    monkeypatch.setattr(cflib.crazyflie, "Crazyflie", cls)
    monkeypatch.setattr(cflib.crtp, "init_drivers", create_autospec(cflib.crtp.init_drivers))
    CrazyflieRobot(start_thread=False)._default_link()
    assert cls.call_args == call(rw_cache=str(tmp_path / "xdg/robopolicy/cflib"))
    assert (tmp_path / "xdg/robopolicy/cflib").is_dir() and not (tmp_path / "cache").exists()


def test_streaming_thread_runs_and_stops():
    import time

    cf = fake_crazyflie()
    robot = CrazyflieRobot(link_factory=lambda: cf, log_config_factory=fake_log_config, control_hz=200)
    robot.connect()
    emit_state(cf, STATE)
    robot.send_command(np.array([0.0, 0.0, 0.5, 0.0]))
    time.sleep(0.1)
    robot.disconnect()
    sent = [c for c in commander_calls(cf) if c[0] == "send_position_setpoint"]
    assert len(sent) >= 5
    assert commander_calls(cf)[-1] == call.send_notify_setpoint_stop() and cf.close_link.called


def test_a_stop_before_the_first_command_does_not_latch_but_one_after_does():
    """The control loop holds its safe action (stop) while it waits for its first chunk: that must not keep the
    drone grounded for the whole run, while a stop in flight stays latched until the operator re-arms."""
    robot, cf, clock = make()
    emit_state(cf, STATE)
    robot.stop()  # waiting for the first chunk
    assert robot.safe_mode is None
    robot.send_command(np.array([0.0, 0.0, 1.0, 0.0]))
    assert robot.tick() == "command" and commander_calls(cf)[-1][0] == "send_position_setpoint"
    robot.stop()  # in flight
    assert robot.safe_mode == "stopped"
    robot.send_command(np.array([0.0, 0.0, 1.0, 0.0]))
    assert robot.tick() == "stopped" and commander_calls(cf)[-1][0] == "send_stop_setpoint"
    robot.reset_safety()
    robot.send_command(np.array([0.0, 0.0, 1.0, 0.0]))
    assert robot.tick() == "command"
