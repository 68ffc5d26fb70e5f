"""Gamepad (pygame joystick) and 3Dconnexion SpaceMouse (``hid``) devices; both optional.

Missing libraries or hardware raise :class:`~robopolicy.teleop.base.DeviceNotAvailable` with what to do.

Gamepad mapping (Xbox / PlayStation layout, SDL numbering): left stick x/y, right stick vertical z,
right stick horizontal yaw; bumpers (LB/RB) roll; A toggles the gripper, Start saves, B discards,
Back quits. SpaceMouse: the puck's six axes are translation and rotation; the left button toggles the
gripper, the right button saves.
"""

from __future__ import annotations

import os

import numpy as np

from robopolicy.teleop.base import ArmPose, DeviceNotAvailable, TeleopCommand, TeleopDevice

SPACEMOUSE_IDS = ((0x256F, None), (0x046D, 0xC626), (0x046D, 0xC62B))  # 3Dconnexion (new and old vendor ids)


class GamepadDevice(TeleopDevice):
    def __init__(self, index: int = 0, pos_step: float = 0.01, rot_step: float = 0.05, deadzone: float = 0.1):
        self.index, self.pos_step, self.rot_step, self.deadzone = index, pos_step, rot_step, deadzone
        self.gripper = -1.0
        self._js = None
        self._buttons_prev: list[int] = []

    def start(self) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        try:
            import pygame
        except ImportError as e:
            raise DeviceNotAvailable("the gamepad device needs pygame: pip install pygame") from e
        pygame.init()
        pygame.joystick.init()
        if pygame.joystick.get_count() <= self.index:
            raise DeviceNotAvailable(f"no gamepad at index {self.index} ({pygame.joystick.get_count()} connected); "
                                     "plug one in (over SSH the device must be on the machine running this)")
        self._pg = pygame
        self._js = pygame.joystick.Joystick(self.index)
        self._js.init()

    def _axis(self, i: int) -> float:
        v = self._js.get_axis(i) if i < self._js.get_numaxes() else 0.0
        return 0.0 if abs(v) < self.deadzone else float(v)

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        if self._js is None:
            self.start()
        self._pg.event.pump()
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


class SpaceMouseDevice(TeleopDevice):
    def __init__(self, pos_step: float = 0.01, rot_step: float = 0.05, scale: float = 350.0):
        self.pos_step, self.rot_step, self.scale = pos_step, rot_step, scale
        self.gripper = -1.0
        self._dev = None
        self._t = np.zeros(3)
        self._r = np.zeros(3)
        self._buttons = 0

    def start(self) -> None:
        try:
            import hid
        except ImportError as e:
            raise DeviceNotAvailable("the SpaceMouse device needs hidapi: pip install hidapi (and udev access to "
                                     "/dev/hidraw*)") from e
        for info in hid.enumerate():
            for vid, pid in SPACEMOUSE_IDS:
                if info["vendor_id"] == vid and (pid is None or info["product_id"] == pid):
                    self._dev = hid.device()
                    self._dev.open_path(info["path"])
                    self._dev.set_nonblocking(True)
                    return
        raise DeviceNotAvailable("no 3Dconnexion SpaceMouse found (hid.enumerate() lists none)")

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        if self._dev is None:
            self.start()
        events: set[str] = set()
        while True:
            data = self._dev.read(13)
            if not data:
                break
            v = np.frombuffer(bytes(data[1:13]).ljust(12, b"\0"), dtype="<i2").astype(np.float64) / self.scale
            if data[0] == 1:  # translation (and, on newer models, rotation in the same report)
                self._t = np.array([v[1], v[0], -v[2]])
                if len(data) >= 13:
                    self._r = np.array([-v[3], -v[4], v[5]])
            elif data[0] == 2:
                self._r = np.array([-v[0], -v[1], v[2]])
            elif data[0] == 3:
                new = data[1]
                if new & 1 and not self._buttons & 1:
                    self.gripper = -self.gripper
                if new & 2 and not self._buttons & 2:
                    events.add("save")
                self._buttons = new
        dp = np.clip(self._t, -1, 1) * self.pos_step
        dr = np.clip(self._r, -1, 1) * self.rot_step
        return TeleopCommand(dp, dr, self.gripper, frozenset(events))

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None


__all__ = ["GamepadDevice", "SpaceMouseDevice"]
