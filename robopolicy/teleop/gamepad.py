"""Gamepad (pygame joystick) and 3Dconnexion SpaceMouse (pyspacemouse) devices; both optional.

Missing libraries or hardware raise :class:`~robopolicy.teleop.base.DeviceNotAvailable` with what to do.

Gamepad mapping (Xbox / PlayStation layout, SDL numbering): left stick x/y, right stick vertical z,
right stick horizontal yaw; bumpers (LB/RB) roll; A toggles the gripper, Start saves, B discards,
Back quits. SpaceMouse: the puck's six axes (pyspacemouse's ROS convention) are translation and rotation; the
left button toggles the gripper, the right button saves. The HID report parsing is pyspacemouse's, which carries
the report layout of every 3Dconnexion model it supports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from robopolicy.teleop.base import ArmPose, DeviceNotAvailable, TeleopCommand, TeleopDevice

_MAX_REPORTS_PER_READ = 64


class GamepadDevice(TeleopDevice):
    def __init__(self, index: int = 0, pos_step: float = 0.01, rot_step: float = 0.05, deadzone: float = 0.1,
                 joystick: Any = None):
        """``joystick``: an already opened ``pygame.joystick.Joystick`` (or a stand-in with its API) to read
        instead of opening joystick ``index``."""
        self.index, self.pos_step, self.rot_step, self.deadzone = index, pos_step, rot_step, deadzone
        self.gripper = -1.0
        self._js = joystick
        self._buttons_prev: list[int] = []
        self._pump: Callable[[], None] = lambda: None
        self._started = False

    def start(self) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        try:
            import pygame
        except ImportError as e:
            raise DeviceNotAvailable("the gamepad device needs pygame: pip install pygame") from e
        pygame.init()
        pygame.joystick.init()
        self._pump = pygame.event.pump  # joystick state updates only as SDL's events are pumped
        self._started = True
        if self._js is not None:
            return
        if pygame.joystick.get_count() <= self.index:
            raise DeviceNotAvailable(f"no gamepad at index {self.index} ({pygame.joystick.get_count()} connected); "
                                     "plug one in (over SSH the device must be on the machine running this)")
        self._js = pygame.joystick.Joystick(self.index)
        self._js.init()

    def _axis(self, i: int) -> float:
        v = self._js.get_axis(i) if i < self._js.get_numaxes() else 0.0
        return 0.0 if abs(v) < self.deadzone else float(v)

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        if not self._started:
            self.start()
        self._pump()
        buttons = [self._js.get_button(i) for i in range(self._js.get_numbuttons())]
        pressed = {i for i, b in enumerate(buttons) if b and not (i < len(self._buttons_prev) and self._buttons_prev[i])}
        self._buttons_prev = buttons
        if 0 in pressed:
            self.gripper = -self.gripper
        events = {name for i, name in ((7, "save"), (1, "discard"), (6, "quit")) if i in pressed}
        dp = np.array([-self._axis(1), -self._axis(0), -self._axis(4)]) * self.pos_step
        roll = (buttons[5] if len(buttons) > 5 else 0) - (buttons[4] if len(buttons) > 4 else 0)
        dr = np.array([roll, 0.0, -self._axis(3)]) * self.rot_step
        return TeleopCommand(dp, dr, self.gripper, frozenset(events))

    def close(self) -> None:
        if self._js is not None:
            self._js.quit()
            self._js = None
        self._started = False


class SpaceMouseDevice(TeleopDevice):
    """A 3Dconnexion SpaceMouse through pyspacemouse, which knows each model's HID report layout.

    Axes come in pyspacemouse's ROS convention (x forward = push away from you, y left, z up; roll, pitch, yaw
    about them), in [-1, 1], and map onto the robot base frame as they are. The left button toggles the gripper,
    the right one saves. ``open_device`` (for tests and custom specs) returns an opened
    ``pyspacemouse.SpaceMouseDevice``; by default the first connected supported model is opened.
    """

    def __init__(self, pos_step: float = 0.01, rot_step: float = 0.05, device_name: str | None = None,
                 open_device: Callable[[], Any] | None = None):
        self.pos_step, self.rot_step, self.device_name = pos_step, rot_step, device_name
        self.gripper = -1.0
        self._open_device = open_device
        self._dev: Any = None
        self._reports = 0
        self._buttons_prev: list[int] = []

    def start(self) -> None:
        opener = self._open_device or self._open_pyspacemouse
        try:
            self._dev = opener()
        except DeviceNotAvailable:
            raise
        except RuntimeError as e:  # pyspacemouse: no supported device, or the hidapi library is missing
            raise DeviceNotAvailable(f"no 3Dconnexion SpaceMouse could be opened ({e}); plug one in, install the "
                                     "hidapi library (apt install libhidapi-hidraw0) and allow access to "
                                     "/dev/hidraw*") from e
        self._dev.configure(callback=self._count_report)

    def _open_pyspacemouse(self) -> Any:
        try:
            import pyspacemouse
        except (ImportError, OSError) as e:
            raise DeviceNotAvailable("the SpaceMouse device needs pyspacemouse: pip install 'robopolicy[teleop]'") from e
        return pyspacemouse.open(device=self.device_name, nonblocking=True,
                                 axis_convention=pyspacemouse.AxisConvention.ROS)

    def _count_report(self, state: Any) -> None:
        self._reports += 1

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        if self._dev is None:
            self.start()
        for _ in range(_MAX_REPORTS_PER_READ):  # drain: translation, rotation and buttons come in separate reports
            before = self._reports
            state = self._dev.read()
            if self._reports == before:
                break
        buttons = list(state.buttons)
        pressed = {i for i, b in enumerate(buttons) if b and not (i < len(self._buttons_prev) and self._buttons_prev[i])}
        self._buttons_prev = buttons
        if 0 in pressed:
            self.gripper = -self.gripper
        events = {"save"} if 1 in pressed else set()
        dp = np.clip([state.x, state.y, state.z], -1, 1) * self.pos_step
        dr = np.clip([state.roll, state.pitch, state.yaw], -1, 1) * self.rot_step
        return TeleopCommand(dp, dr, self.gripper, frozenset(events))

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None


__all__ = ["GamepadDevice", "SpaceMouseDevice"]
