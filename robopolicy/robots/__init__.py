"""Robots the control loop can drive, by name (``robopolicy run robot=<name>``)."""

from __future__ import annotations

from typing import Any

from robopolicy.robots.base import EchoRobot, Robot, RobotSpec, RobotState


def make_robot(name: str, **kwargs: Any) -> Robot:
    if name == "sim_pusht":
        from robopolicy.robots.sim_pusht import SimPushTRobot

        return SimPushTRobot(**kwargs)
    if name == "echo":
        return EchoRobot(**kwargs)
    if name == "sim_arm":
        from robopolicy.robots.sim_arm import SimArm

        return SimArm(**kwargs)
    if name == "bridge_arm":
        from robopolicy.robots.sim_arm import BridgeArm

        return BridgeArm(**kwargs)
    if name == "lerobot":  # any LeRobot robot: robot.type=so101_follower robot.port=... robot.id=...
        from robopolicy.robots.lerobot_robot import LeRobotRobot

        return LeRobotRobot(**kwargs)
    raise KeyError(f"unknown robot {name!r}; available: {available_robots()}")


def available_robots() -> list[str]:
    return ["bridge_arm", "echo", "lerobot", "sim_arm", "sim_pusht"]


__all__ = ["EchoRobot", "Robot", "RobotSpec", "RobotState", "available_robots", "make_robot"]
