"""Teleoperation devices (keyboard over SSH, gamepad, SpaceMouse, ZeroMQ leader, scripted) and the recording loop."""

from robopolicy.teleop.base import ArmPose, DeviceNotAvailable, TeleopCommand, TeleopDevice
from robopolicy.teleop.keyboard import KeyboardDevice
from robopolicy.teleop.scripted import ScriptedDevice


def make_device(name: str, **kwargs) -> TeleopDevice:
    """``keyboard``, ``gamepad``, ``spacemouse`` or ``zmq`` (needs ``address=``)."""
    if name == "keyboard":
        return KeyboardDevice(**kwargs)
    if name == "gamepad":
        from robopolicy.teleop.gamepad import GamepadDevice

        return GamepadDevice(**kwargs)
    if name == "spacemouse":
        from robopolicy.teleop.gamepad import SpaceMouseDevice

        return SpaceMouseDevice(**kwargs)
    if name == "zmq":
        from robopolicy.teleop.zmq_leader import ZmqLeaderDevice

        return ZmqLeaderDevice(**kwargs)
    raise ValueError(f"unknown teleop device {name!r} (keyboard, gamepad, spacemouse, zmq)")


__all__ = ["ArmPose", "DeviceNotAvailable", "KeyboardDevice", "ScriptedDevice", "TeleopCommand", "TeleopDevice",
           "make_device"]
