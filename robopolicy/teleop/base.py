"""Teleoperation devices: end-effector delta commands plus gripper open/close, and operator events.

Every device turns its input into a :class:`TeleopCommand` per control step:

- ``delta_pos`` (3,): end-effector translation for this step, metres, robot base frame
- ``delta_rot`` (3,): end-effector rotation for this step, axis-angle radians, base frame
- ``gripper``: -1 open, +1 closed (robosuite's convention), or None to keep the current state
- ``events``: operator requests: ``"save"`` (episode done), ``"discard"`` (re-record), ``"quit"``

Devices that know absolute targets (the ZeroMQ leader stream) need the arm's current pose to turn
them into deltas, so :meth:`TeleopDevice.read` receives it (``ArmPose``; keyboards ignore it).
Quaternions are (x, y, z, w), as in robosuite and scipy; rotation math is scipy's ``Rotation``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import numpy as np
from scipy.spatial.transform import Rotation

EVENTS = frozenset({"save", "discard", "quit"})


class DeviceNotAvailable(RuntimeError):
    """The device's library or hardware is missing; the message says what to install or plug in."""


@dataclasses.dataclass
class ArmPose:
    pos: np.ndarray  # (3,) metres
    quat: np.ndarray  # (4,) x, y, z, w
    gripper: float = -1.0  # last commanded: -1 open, +1 closed


@dataclasses.dataclass
class TeleopCommand:
    delta_pos: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    delta_rot: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    gripper: float | None = None
    events: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.delta_pos = np.asarray(self.delta_pos, dtype=np.float64).reshape(3)
        self.delta_rot = np.asarray(self.delta_rot, dtype=np.float64).reshape(3)
        unknown = set(self.events) - EVENTS
        if unknown:
            raise ValueError(f"unknown teleop events {sorted(unknown)} (known: {sorted(EVENTS)})")
        self.events = frozenset(self.events)

    @property
    def is_motion(self) -> bool:
        return bool(np.any(self.delta_pos) or np.any(self.delta_rot))


class TeleopDevice(ABC):
    """A source of :class:`TeleopCommand`; ``read`` never blocks longer than a few milliseconds."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open the device (terminal raw mode, sockets, HID handle)."""

    @abstractmethod
    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        """The command for this control step."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device (restore the terminal, close sockets)."""

    def __enter__(self) -> TeleopDevice:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- rotations (scipy's Rotation; quaternions x, y, z, w as scipy and robosuite order them) ------------------

def _rotation(q: np.ndarray) -> Rotation:
    """A rotation from a quaternion; a zero or non-finite one is an error, not a NaN command for the arm."""
    q = np.asarray(q, dtype=np.float64).reshape(4)
    if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
        raise ValueError(f"quaternion {q.tolist()} is not a rotation (zero or non-finite)")
    return Rotation.from_quat(q)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation ``a`` after ``b`` as a unit quaternion."""
    return (_rotation(a) * _rotation(b)).as_quat()


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Axis-angle (rotation vector, angle in [0, pi]) of a quaternion of any norm."""
    return _rotation(q).as_rotvec()


def axis_angle_to_quat(v: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(v, dtype=np.float64).reshape(3)).as_quat()


def pose_delta(current: ArmPose, target_pos: np.ndarray, target_quat: np.ndarray, max_pos: float,
               max_rot: float) -> tuple[np.ndarray, np.ndarray]:
    """Translation and axis-angle rotation from the current pose toward a target, each clipped in norm.

    The rotation is expressed in the base frame: ``R_target * R_current^-1``.
    """
    dp = np.asarray(target_pos, dtype=np.float64).reshape(3) - current.pos
    dr = (_rotation(target_quat) * _rotation(current.quat).inv()).as_rotvec()
    if not np.isfinite(dp).all():
        raise ValueError(f"target position {np.asarray(target_pos).tolist()} is not finite")
    n = np.linalg.norm(dp)
    if n > max_pos:
        dp *= max_pos / n
    n = np.linalg.norm(dr)
    if n > max_rot:
        dr *= max_rot / n
    return dp, dr


__all__ = ["ArmPose", "DeviceNotAvailable", "EVENTS", "TeleopCommand", "TeleopDevice", "axis_angle_to_quat",
           "pose_delta", "quat_mul", "quat_to_axis_angle"]
