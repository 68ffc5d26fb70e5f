"""Every robot starts from the command line: ``robopolicy run robot=<name> robot.<field>=...`` through the CLI's
entry point against a policy server, with each robot's fields from its config group."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from robopolicy import cli
from robopolicy.deploy.adapter import PolicyAdapter
from robopolicy.deploy.arm_bridge import ArmBridge, KinematicArm
from robopolicy.deploy.protocol import PolicySpec
from robopolicy.deploy.server import PolicyServer
from robopolicy.robots import available_robots, make_robot
from tests.conftest import ipc_address


def constant_policy(robot_fields: dict, probe_s: float = 30.0) -> PolicyAdapter:
    """A policy asking for the robot's ``observation.state`` (its shape probed from the robot itself) and
    answering the middle of the robot's action range."""
    fields = dict(robot_fields)
    robot = make_robot(fields.pop("name"), **fields)
    with robot:
        deadline = time.monotonic() + probe_s
        while (state := robot.read_state()) is None:
            assert time.monotonic() < deadline, "the robot never reported a state"
            time.sleep(0.01)
    shape = tuple(np.asarray(state.observation["observation.state"]).shape)
    middle = ((robot.spec.action_low + robot.spec.action_high) / 2).astype(np.float32)
    spec = PolicySpec(input_features={"observation.state": shape}, action_key="action",
                      action_dim=robot.spec.action_dim, n_obs_steps=1, horizon=8, n_action_steps=4, fps=10.0,
                      name="constant")
    return PolicyAdapter(spec, lambda obs: np.tile(middle, (spec.horizon, 1)))


def run_from_cli(capsys, robot_overrides: list[str], address: str, duration_s: float = 1.5) -> dict:
    capsys.readouterr()
    assert cli.main(["run", *robot_overrides, f"server={address}", f"duration_s={duration_s}",
                     "control_hz=50"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def served_run(capsys, tmp_path: Path, robot_fields: dict, overrides: list[str]) -> dict:
    address = ipc_address("policy")
    with PolicyServer(constant_policy(robot_fields), address=address, status_every_s=0):
        summary = run_from_cli(capsys, overrides, address)
    assert summary["fatal"] is None and summary["chunks"] > 0 and summary["ticks"] > 0, summary
    return summary


def test_the_registry_names_every_robot_with_a_config():
    configs = {p.stem for p in (Path(cli.__file__).parent / "configs" / "robot").glob("*.yaml")}
    assert set(available_robots()) <= configs


def test_a_misspelt_robot_field_is_named(capsys):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['speed'\]"):
        cli.main(["run", "robot=bridge_arm", "+robot.speed=3", "duration_s=0.1"])
    with pytest.raises(KeyError, match="unknown robot 'rocket'"):
        make_robot("rocket")


def test_the_runtime_composer_reads_dict_and_list_overrides_as_hydra_does():
    """A runtime install composes without Hydra; a camera dict typed in Hydra's syntax must come out the same."""
    from robopolicy.configs import load_config

    overrides = ["robot=lerobot", "robot.cameras={front:{type:opencv,index_or_path:0,fps:30},wrist:{type:opencv}}",
                 "+robot.action_low=[-90,-90.5,0]", "server=tcp://10.0.0.2:5555", "robot.port=/dev/ttyACM0"]
    with_hydra, without = (OmegaConf.to_container(load_config("run", overrides, use_hydra=h)) for h in (True, False))
    assert without["robot"]["cameras"] == {"front": {"type": "opencv", "index_or_path": 0, "fps": 30},
                                           "wrist": {"type": "opencv"}}
    assert without["robot"]["action_low"] == [-90, -90.5, 0] and without["server"] == "tcp://10.0.0.2:5555"
    assert without == with_hydra
    record = ["device=lerobot", "output=x", "arm.port=/dev/ttyACM0", "teleop.type=so101_leader", "single_task=pick"]
    with_hydra, without = (OmegaConf.to_container(load_config("record", record, use_hydra=h)) for h in (True, False))
    assert without == with_hydra and without["arm"]["type"] == "so101_follower"  # robot=lerobot's group at arm


def test_echo_from_the_cli(capsys, tmp_path):
    served_run(capsys, tmp_path, {"name": "echo", "dim": 2, "hz": 10.0}, ["robot=echo"])


def test_sim_pusht_from_the_cli(capsys, tmp_path):
    served_run(capsys, tmp_path, {"name": "sim_pusht", "seed": 3}, ["robot=sim_pusht", "robot.seed=3"])


def test_bridge_arm_from_the_cli_against_the_reference_bridge(capsys, tmp_path):
    """The user's own arm: the reference bridge (kinematic arm) at three addresses given as config fields."""
    addrs = {k: ipc_address(k) for k in ("state_addr", "cmd_addr", "ctl_addr")}
    bridge = ArmBridge(KinematicArm(), **addrs)
    thread = threading.Thread(target=bridge.run, kwargs={"max_runtime_s": 60.0}, daemon=True)
    thread.start()
    try:
        summary = served_run(capsys, tmp_path, {"name": "bridge_arm", **addrs},
                             ["robot=bridge_arm", *[f"robot.{k}={v}" for k, v in addrs.items()]])
        assert summary["safety"]["rejected"] == 0
    finally:
        bridge.stop()
        thread.join(timeout=10)
        bridge.close()


def test_sim_quadrotor_from_the_cli(capsys, tmp_path):
    served_run(capsys, tmp_path, {"name": "sim_quadrotor", "seed": 1, "safe_mode": "motors_off"},
               ["robot=sim_quadrotor", "robot.seed=1", "robot.safe_mode=motors_off"])


def test_crazyflie_from_the_cli_over_a_fake_radio(capsys, tmp_path, monkeypatch):
    """``robot=crazyflie robot.uri=... robot.mode=position``: the driver's own default link, with cflib's
    ``Crazyflie`` and ``LogConfig`` replaced by autospecs of themselves (tests/test_crazyflie.py) and a thread
    playing the drone's log stream."""
    import cflib.crazyflie
    import cflib.crazyflie.log
    import cflib.crtp

    from tests.test_crazyflie import STATE, emit_state, fake_crazyflie, fake_log_config

    links = []

    def new_link(**kw):
        links.append(fake_crazyflie())
        return links[-1]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cflib.crtp, "init_drivers", lambda *a, **kw: None)
    monkeypatch.setattr(cflib.crazyflie, "Crazyflie", new_link)
    monkeypatch.setattr(cflib.crazyflie.log, "LogConfig", fake_log_config)
    stop = threading.Event()

    def drone():  # the log blocks of whichever link is open, at 100 Hz
        while not stop.wait(0.01):
            for cf in list(links):
                if cf.log.add_config.call_args_list:
                    emit_state(cf, STATE)

    threading.Thread(target=drone, daemon=True).start()
    uri = "radio://0/80/2M/E7E7E7E7E7"
    try:
        summary = served_run(capsys, tmp_path, {"name": "crazyflie", "uri": uri, "mode": "position"},
                   ["robot=crazyflie", f"robot.uri={uri}", "robot.mode=position"])
    finally:
        stop.set()
    cf = links[-1]  # the CLI's own link
    assert cf.open_link.call_args.args == (uri,) and cf.close_link.called
    sent = [c for c in cf.commander.mock_calls if c[0] == "send_position_setpoint"]
    assert sent, (sorted({c[0] for c in cf.commander.mock_calls}), summary)
    assert any(c[0] in ("send_stop_setpoint", "send_notify_setpoint_stop") for c in cf.commander.mock_calls[-5:])
