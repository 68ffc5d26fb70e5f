"""Robots the control loop can drive, by name (``robopolicy run robot=<name> robot.<field>=...``).

Each robot's module is imported only when it is chosen: a Crazyflie needs cflib, the simulated ones their
simulators, and none of that belongs on another robot's computer.
"""

from __future__ import annotations

import inspect
from typing import Any

from robopolicy.deploy.robot import Robot, RobotSpec, RobotState
from robopolicy.robots.base import EchoRobot

ROBOTS = ("bridge_arm", "crazyflie", "echo", "lerobot", "sim_arm", "sim_pusht", "sim_quadrotor")


def robot_class(name: str) -> type[Robot]:
    """The class behind a robot name (its module imported now)."""
    if name == "echo":
        return EchoRobot
    if name == "sim_pusht":
        from robopolicy.robots.sim_pusht import SimPushTRobot

        return SimPushTRobot
    if name == "sim_arm":
        from robopolicy.robots.sim_arm import SimArm

        return SimArm
    if name == "bridge_arm":
        from robopolicy.robots.sim_arm import BridgeArm

        return BridgeArm
    if name == "crazyflie":
        from robopolicy.robots.crazyflie import CrazyflieRobot

        return CrazyflieRobot
    if name == "sim_quadrotor":
        from robopolicy.robots.sim_quadrotor import SimQuadrotorRobot

        return SimQuadrotorRobot
    if name == "lerobot":  # any LeRobot robot: robot.type=so101_follower robot.port=... robot.id=...
        from robopolicy.robots.lerobot_robot import LeRobotRobot

        return LeRobotRobot
    raise KeyError(f"unknown robot {name!r}; available: {', '.join(available_robots())}")


def make_robot(name: str, **kwargs: Any) -> Robot:
    """``name``'s robot built from config fields, each checked against its constructor first, so a misspelt
    field is an error naming it rather than a TypeError from deep inside."""
    cls = robot_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [k for k, p in params.items() if k != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(known))
    if unknown and not takes_any:
        raise ValueError(f"robot={name}: unknown field(s) {unknown}; {name} takes {known}")
    missing = [k for k, p in params.items() if k != "self" and p.default is inspect.Parameter.empty
               and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL) and k not in kwargs]
    if missing:
        raise ValueError(f"robot={name}: missing field(s) {missing} (set robot.<field>=...)")
    return cls(**kwargs)


def available_robots() -> list[str]:
    return sorted(ROBOTS)


__all__ = ["EchoRobot", "Robot", "RobotSpec", "RobotState", "available_robots", "make_robot", "robot_class"]
