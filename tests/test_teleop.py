"""Teleop devices: keyboard through a real pty, ZeroMQ leader stream, scripted device, recording loop."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from unittest.mock import create_autospec

import numpy as np
import pytest

from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.recorder import DatasetRecorder
from robopolicy.teleop import DeviceNotAvailable, KeyboardDevice, ScriptedDevice, TeleopCommand
from robopolicy.teleop.base import ArmPose, axis_angle_to_quat, pose_delta, quat_mul, quat_to_axis_angle
from robopolicy.teleop.keyboard import parse_keys
from robopolicy.teleop.record import record_teleop
from tests.conftest import ipc_address


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_parse_keys_arrows():
    assert parse_keys("w\x1b[Ad \r") == ["w", "\x1b[A", "d", " ", "\r"]


def test_keyboard_over_a_pty_raw_mode_and_hold():
    master, slave = os.openpty()
    clock = FakeClock()
    dev = KeyboardDevice(fd=slave, pos_step=0.01, rot_step=0.1, hold_s=0.25, clock=clock)
    try:
        dev.start()
        import termios

        assert not termios.tcgetattr(slave)[3] & termios.ECHO  # raw: no echo
        assert dev.read().delta_pos.tolist() == [0, 0, 0]  # nothing typed: no blocking, no motion
        os.write(master, b"w\x1b[Cz ")
        time.sleep(0.05)
        cmd = dev.read()
        np.testing.assert_allclose(cmd.delta_pos, [0.01, -0.01, 0.0])
        np.testing.assert_allclose(cmd.delta_rot, [0.1, 0.0, 0.0])
        assert cmd.gripper == 1.0 and not cmd.events
        clock.t = 0.2
        assert dev.read().delta_pos[0] == 0.01  # still held
        clock.t = 0.3
        assert not dev.read().is_motion  # released after hold_s
        os.write(master, b"\r")
        time.sleep(0.05)
        assert dev.read().events == {"save"}
        os.write(master, b"\x7f\x03")
        time.sleep(0.05)
        assert dev.read().events == {"discard", "quit"}
    finally:
        dev.close()
        assert termios.tcgetattr(slave)[3] & termios.ECHO  # terminal restored
        os.close(master)
        os.close(slave)


def test_keyboard_on_a_pipe_without_tty():
    r, w = os.pipe()
    dev = KeyboardDevice(fd=r)
    with dev:
        os.write(w, b"rrf")
        time.sleep(0.02)
        assert dev.read().delta_pos[2] == -dev.pos_step  # the last press on an axis wins
    os.close(r)
    os.close(w)


def test_quaternion_helpers_and_pose_delta():
    v = np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(quat_to_axis_angle(axis_angle_to_quat(v)), v, atol=1e-12)
    q = axis_angle_to_quat([0, 0, 0.4])
    np.testing.assert_allclose(quat_to_axis_angle(quat_mul(q, q)), [0, 0, 0.8], atol=1e-12)
    pose = ArmPose(np.zeros(3), np.array([0, 0, 0, 1.0]))
    dp, dr = pose_delta(pose, [0.3, 0, 0], axis_angle_to_quat([0, 0, 1.0]), max_pos=0.02, max_rot=0.2)
    np.testing.assert_allclose(dp, [0.02, 0, 0])
    np.testing.assert_allclose(dr, [0, 0, 0.2], atol=1e-12)


@contextlib.contextmanager
def joined_leader(tag: str, timeout_s: float):
    """A leader publisher and a ZeroMQ leader device whose subscription is up (slow joiner: publish a resting
    target until the device has read one), closed afterwards; yields (publisher, device, the arm's pose)."""
    import zmq

    from robopolicy.teleop.zmq_leader import LeaderPublisher, ZmqLeaderDevice

    addr = ipc_address(tag)
    ctx = zmq.Context()
    pub = LeaderPublisher(addr, context=ctx)
    dev = ZmqLeaderDevice(addr, max_pos=0.05, max_rot=0.5, timeout_s=timeout_s, context=ctx)
    dev.start()
    try:
        pose = ArmPose(np.array([0.0, 0.0, 1.0]), np.array([0, 0, 0, 1.0]))
        deadline = time.monotonic() + 5
        while dev.read(pose).gripper is None:
            pub.publish([0.0, 0.0, 1.0], [0, 0, 0, 1], gripper=-1)
            time.sleep(0.01)
            assert time.monotonic() < deadline
        yield pub, dev, pose
    finally:
        dev.close()
        pub.close()
        ctx.term()


def test_zmq_leader_latest_wins_timeout_and_bad_messages():
    with joined_leader("leader", timeout_s=0.3) as (pub, dev, pose):
        pub.sock.send(b"\xc1garbage")
        time.sleep(0.05)
        dev.read(pose)
        assert dev.rejected == 1
        for x in (0.01, 0.02, 0.03):
            pub.publish([x, 0.0, 1.0], [0, 0, 0, 1], gripper=1.0)
        time.sleep(0.05)
        cmd = dev.read(pose)
        np.testing.assert_allclose(cmd.delta_pos, [0.03, 0, 0], atol=1e-12)  # newest target (conflated)
        assert cmd.gripper == 1.0
        pub.publish([0.0, 0.0, 1.0], [0, 0, 0, 1], events=["save"])
        time.sleep(0.05)
        assert dev.read(pose).events == {"save"}
        pub.publish([0.5, 0.0, 1.0], [0, 0, 0, 1], clutch=False)
        time.sleep(0.05)
        assert not dev.read(pose).is_motion  # clutch released: no motion
        pub.publish([0.5, 0.0, 1.0], [0, 0, 0, 1])
        time.sleep(0.05)
        np.testing.assert_allclose(dev.read(pose).delta_pos, [0.05, 0, 0])  # clipped step
        time.sleep(0.35)
        assert not dev.read(pose).is_motion  # stale leader: hold


def test_gamepad_and_spacemouse_report_unavailable_clearly(monkeypatch):
    import pygame
    import pyspacemouse

    from robopolicy.teleop.gamepad import GamepadDevice, SpaceMouseDevice

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setattr(pygame.joystick, "get_count", lambda: 0)  # whatever is plugged into this machine
    with pytest.raises(DeviceNotAvailable, match=r"no gamepad at index 7 \(0 connected\)"):
        GamepadDevice(index=7).start()
    # pyspacemouse's own error when nothing is connected (or the hidapi library is missing)
    fake_open = create_autospec(pyspacemouse.open, side_effect=RuntimeError("No connected or supported devices found."))
    monkeypatch.setattr(pyspacemouse, "open", fake_open)
    with pytest.raises(DeviceNotAvailable, match=r"no 3Dconnexion SpaceMouse could be opened \(No connected"):
        SpaceMouseDevice().start()
    assert fake_open.call_args.kwargs["axis_convention"] == pyspacemouse.AxisConvention.ROS


# A gamepad session in SDL's Xbox layout, as pygame polls it once per control step: axes (left x, left y, LT,
# right x, right y, RT) and buttons (A, B, X, Y, LB, RB, Back, Start, Guide, LS, RS). Synthesized (no gamepad on
# CI), but shaped like a recording: resting sticks drift inside the dead zone and buttons stay held across polls.
GAMEPAD_STREAM = [
    ([0.03, -0.02, -1.0, 0.01, 0.04, -1.0], [0] * 11),  # at rest: stick drift under the dead zone
    ([0.0, -1.0, -1.0, 0.0, 0.0, -1.0], [0] * 11),  # left stick pushed forward
    ([-0.5, 0.0, -1.0, 0.0, 0.0, -1.0], [1] + [0] * 10),  # left stick left, A pressed: close the gripper
    ([0.0, 0.0, -1.0, 0.0, 0.8, -1.0], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),  # A still held, right stick down, RB
    ([0.0, 0.0, -1.0, 0.6, 0.0, -1.0], [0] * 7 + [1, 0, 0, 0]),  # right stick right, Start: save
    ([0.0, 0.0, -1.0, 0.0, 0.0, -1.0], [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]),  # B and Back: discard and quit
]


def test_gamepad_mapping_from_a_recorded_stream(monkeypatch):
    import pygame

    from robopolicy.teleop.gamepad import GamepadDevice

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    frame = {"axes": GAMEPAD_STREAM[0][0], "buttons": GAMEPAD_STREAM[0][1]}
    js = create_autospec(pygame.joystick.JoystickType, instance=True)
    js.get_numaxes.side_effect = lambda: len(frame["axes"])
    js.get_numbuttons.side_effect = lambda: len(frame["buttons"])
    js.get_axis.side_effect = lambda i: frame["axes"][i]
    js.get_button.side_effect = lambda i: frame["buttons"][i]
    dev = GamepadDevice(pos_step=0.01, rot_step=0.1, deadzone=0.1, joystick=js)
    commands = []
    for axes, buttons in GAMEPAD_STREAM:
        frame.update(axes=axes, buttons=buttons)
        commands.append(dev.read())
    dev.close()
    js.quit.assert_called_once_with()
    rest, forward, left, down_roll, yaw_save, stop = commands
    assert not rest.is_motion and rest.gripper == -1.0 and not rest.events
    np.testing.assert_allclose(forward.delta_pos, [0.01, 0, 0])
    np.testing.assert_allclose(left.delta_pos, [0, 0.005, 0])
    assert left.gripper == 1.0 and down_roll.gripper == 1.0  # a held button toggles once
    np.testing.assert_allclose(down_roll.delta_pos, [0, 0, -0.008])
    np.testing.assert_allclose(down_roll.delta_rot, [0.1, 0, 0])
    np.testing.assert_allclose(yaw_save.delta_rot, [0, 0, -0.06])
    assert yaw_save.events == {"save"} and stop.events == {"discard", "quit"}


def _hid_report(report_id: int, *values: int) -> bytearray:
    return bytearray([report_id]) + b"".join(int(v).to_bytes(2, "little", signed=True) for v in values)


def test_spacemouse_mapping_from_recorded_hid_reports():
    """A SpaceNavigator's raw HID reports (translation, rotation and button reports arrive separately), parsed
    by pyspacemouse's own device spec; only the HID handle is a fake, bound to easyhid's API."""
    import easyhid
    import pyspacemouse

    from robopolicy.teleop.gamepad import SpaceMouseDevice

    spec = pyspacemouse.apply_axis_convention(pyspacemouse.get_device_specs()["SpaceNavigator"],
                                              pyspacemouse.AxisConvention.ROS)
    pending: list[bytearray] = []
    hid = create_autospec(easyhid.HIDDevice, instance=True)
    hid.read.side_effect = lambda size=64, timeout=None: pending.pop(0) if pending else bytearray()
    dev = SpaceMouseDevice(pos_step=0.01, rot_step=0.1,
                           open_device=lambda: pyspacemouse.SpaceMouseDevice(info=spec, device=hid))
    dev.start()
    assert not dev.read().is_motion
    # HID axes: x right, y toward the user, z down. Push away from you and to the right, and down (350 = full):
    pending += [_hid_report(1, 350, -175, 350), _hid_report(2, 0, 0, -350), bytearray([3, 0b01, 0])]
    cmd = dev.read()  # one control step drains all three reports
    np.testing.assert_allclose(cmd.delta_pos, [0.005, -0.01, -0.01])  # ROS: forward, left, up
    np.testing.assert_allclose(cmd.delta_rot, [0, 0, 0.1])  # yaw = -HID_Rz: counter-clockwise from above
    assert cmd.gripper == 1.0 and not cmd.events
    pending += [bytearray([3, 0b11, 0])]  # left still held, right pressed
    cmd = dev.read()
    assert cmd.gripper == 1.0 and cmd.events == {"save"}
    np.testing.assert_allclose(cmd.delta_pos, [0.005, -0.01, -0.01])  # no new axis report: the puck holds
    pending += [_hid_report(1, 0, 0, 0), _hid_report(2, 0, 0, 0), bytearray([3, 0, 0])]
    assert not dev.read().is_motion
    dev.close()
    hid.close.assert_called_once_with()


def test_rotation_helpers_refuse_a_zero_quaternion():
    pose = ArmPose(np.zeros(3), np.array([0, 0, 0, 1.0]))
    with pytest.raises(ValueError, match="is not a rotation"):
        pose_delta(pose, [0.1, 0, 0], [0, 0, 0, 0], max_pos=0.02, max_rot=0.2)  # the old code returned NaN
    # a non-unit quaternion is a rotation: normalized, as before
    dp, dr = pose_delta(pose, [0.0, 0, 0], 3 * axis_angle_to_quat([0, 0.1, 0]), max_pos=0.02, max_rot=0.2)
    np.testing.assert_allclose(dr, [0, 0.1, 0], atol=1e-12)
    # half a turn: the rotation vector has length pi whichever way it points
    np.testing.assert_allclose(np.linalg.norm(quat_to_axis_angle([1.0, 0, 0, 0])), np.pi)


def test_zmq_leader_rejects_a_zero_quaternion():
    with joined_leader("leader-q", timeout_s=5) as (pub, dev, pose):
        pub.publish([0.02, 0.0, 1.0], [0, 0, 0, 0])
        time.sleep(0.05)
        cmd = dev.read(pose)
        assert dev.rejected == 1 and np.isfinite(cmd.delta_rot).all() and not cmd.is_motion


class PointEnv:
    """A minimal arm env: the end effector is a point; success when it is above z = 0.05."""

    fps = 10

    def __init__(self):
        self.p = np.zeros(3)
        self.gripper = -1.0
        self.t = 0

    def features(self):
        return {"observation.state": {"dtype": "float32", "shape": [4], "names": None},
                "action": {"dtype": "float32", "shape": [4], "names": None}}

    def _obs(self):
        return {"observation.state": np.r_[self.p, self.gripper].astype(np.float32)}

    def reset(self, seed=None):
        self.p[:] = 0
        self.t = 0
        return self._obs(), {"is_success": False}

    def ee_pose(self):
        return ArmPose(self.p.copy(), np.array([0, 0, 0, 1.0]), self.gripper)

    def teleop_action(self, cmd: TeleopCommand):
        return np.r_[cmd.delta_pos, self.gripper if cmd.gripper is None else cmd.gripper]

    def step(self, a):
        self.p += a[:3]
        self.gripper = a[3]
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 50, {"is_success": bool(self.p[2] > 0.05)}


def test_record_teleop_with_scripted_device_saves_discards_and_quits(tmp_path: Path):
    up = TeleopCommand(delta_pos=[0, 0, 0.01], gripper=1.0)
    script = ([up] * 3 + [TeleopCommand(events={"discard"})]  # attempt 1: operator discards
              + [up] * 4 + [TeleopCommand(events={"save"})]  # attempt 2: operator saves (4 frames)
              + [up] * 7  # attempt 3: z > 0.05 from step 6, held 2 steps -> saved with 7 frames
              + [up] * 2 + [TeleopCommand(events={"quit"})])  # attempt 4: quit, unsaved frames dropped
    env = PointEnv()
    rec = DatasetRecorder(tmp_path / "ds", fps=10, features=env.features())
    summary = record_teleop(env, ScriptedDevice(script), rec, task="go up", num_episodes=5, success_hold_steps=2)
    assert summary.saved == [0, 1] and summary.discarded == 1 and summary.quit
    ds = LeRobotDataset(tmp_path / "ds")
    assert [e["length"] for e in ds.episodes] == [4, 7]
    np.testing.assert_allclose(ds.column("action")[:4, 2], 0.01)
    np.testing.assert_allclose(ds.column("observation.state")[4:, 2], np.arange(7) * 0.01, atol=1e-6)


@pytest.mark.parametrize("fields", [{"events": 5}, {"events": [[1, 2]]}, {"events": {"save": 1}}, {"clutch": "yes"}])
def test_zmq_leader_counts_a_hostile_field_and_carries_on(fields):
    """A leader message whose events or clutch have the wrong type is rejected and counted, never a crash."""
    from robopolicy.deploy.arm_bridge import encode_arm, pack_frames

    with joined_leader("leader-hostile", timeout_s=5) as (pub, dev, pose):
        arrays = {"pos": np.array([0.02, 0.0, 1.0]), "quat": np.array([0, 0, 0, 1.0]), "gripper": np.array([1.0])}
        pub.sock.send(pack_frames(encode_arm("ee_target", 99, arrays, **{"clutch": True, "events": [], **fields})))
        time.sleep(0.05)
        cmd = dev.read(pose)
        assert dev.rejected == 1 and not cmd.events and cmd.gripper == -1
