"""Any LeRobot robot behind robopolicy's :class:`~robopolicy.robots.base.Robot` interface.

``robopolicy run robot=lerobot robot.type=so101_follower robot.port=/dev/ttyACM0 robot.id=my_arm``:
the robot is chosen by its LeRobot config ``type`` and fields, decoded by draccus through LeRobot's
``RobotConfig`` registry and built by ``make_robot_from_config``, so every LeRobot robot and every
installed plugin (``lerobot_robot_*`` packages, registered by LeRobot's own plugin discovery) works
with no code of ours per robot.

Mapping to dataset features (LeRobot's convention, as its recorder writes them):

- ``observation.state``: the robot's float observation features in their declared order (for the
  SO-101: ``shoulder_pan.pos`` .. ``gripper.pos``, degrees and gripper 0..100), float32;
- ``observation.images.<camera>``: each camera's HxWx3 uint8 frame;
- ``action``: the action features in order; :meth:`send_command` maps a vector back to LeRobot's dict.

A driver thread talks to the robot at ``control_hz``: it reads the observation and sends the latest
command, so the arm keeps tracking the last target whoever stops sending. With ``sync_io`` (the default)
the caller's tick is also the robot's: ``read_state()`` reads the bus right then and ``send_command()``
reaches the motors at once, as in LeRobot's own record and eval loops. Without it an observation is up
to one driver period old and a command waits up to one period for the driver: up to ~80 ms at 25 Hz,
which the SO-101 pick-cube policy does not survive (direct env with 38 ms old observations and 40 ms late
commands: 52 % against 94 %; docs/benchmarks.md section 10).

Every command passes a :class:`~robopolicy.deploy.safety.SafetyFilter` first (position limits from the
motors' calibration, the configured velocity/acceleration limits), whoever sends it. The safe
action is "hold": the present position as the goal, torque on. A bus that keeps failing is a fault:
the driver stops, and the next command raises so the control loop's crash path runs; ``disconnect()``
(also on Ctrl-C, through the ``with robot:`` block) lets LeRobot disable torque and close the port.

LeRobot 0.4.4 imports torchvision in one image-processing module that every robot module imports.
robopolicy does not install torchvision (the package index only has CUDA builds); when it is missing,
a placeholder stands in for that import alone and is removed right after (see :func:`import_lerobot`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.deploy.safety import SafetyFilter
from robopolicy.robots.base import Robot, RobotSpec, RobotState

log = logging.getLogger("robopolicy.robots.lerobot")

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
ACTION_KEY = "action"
_TORCHVISION_SHIM = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _torchvision_missing(*_: Any, **__: Any) -> Any:
    raise ImportError("this LeRobot image processor needs torchvision, which robopolicy does not install "
                      "(only CUDA builds are on the package index); robot drivers never call it")


def import_lerobot() -> types.ModuleType:
    """Import ``lerobot.robots`` and ``lerobot.teleoperators`` (and third-party plugins).

    Without torchvision, ``lerobot.processor.hil_processor`` (image crop/resize for human-in-the-loop
    RL, never used by a robot driver) cannot import. A placeholder module whose functions raise a clear
    ImportError is put in ``sys.modules`` for that import only and removed right after, so every other
    ``import torchvision`` / ``find_spec("torchvision")`` still sees the truth.
    """
    if "lerobot.robots" in sys.modules and "lerobot.teleoperators" in sys.modules:
        return sys.modules["lerobot.robots"]
    if importlib.util.find_spec("lerobot") is None:
        raise ModuleNotFoundError("LeRobot is not installed: pip install --no-deps lerobot==0.4.4 datasets==4.8.5 "
                                  "&& pip install 'robopolicy[lerobot]' (see docs/arms.md)")
    shim = importlib.util.find_spec("torchvision") is None
    if shim:
        for name in ("datasets", "accelerate"):  # they probe torchvision at import: let them see it missing
            importlib.import_module(name)
        mods = {n: types.ModuleType(n) for n in _TORCHVISION_SHIM}
        mods["torchvision.transforms.functional"].crop = _torchvision_missing
        mods["torchvision.transforms.functional"].resize = _torchvision_missing
        mods["torchvision"].transforms = mods["torchvision.transforms"]
        mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
        sys.modules.update(mods)
    try:
        robots = importlib.import_module("lerobot.robots")
        for package in (robots, importlib.import_module("lerobot.teleoperators")):
            _register_builtin_devices(package)
        from lerobot.utils.import_utils import register_third_party_plugins

        register_third_party_plugins()
    finally:
        if shim:
            for n in _TORCHVISION_SHIM:
                sys.modules.pop(n, None)
    return robots


def _register_builtin_devices(package: types.ModuleType) -> None:
    """Import each LeRobot robot/teleoperator subpackage so its config type registers (as LeRobot's
    scripts do); where a device's optional SDK is missing, at least its ``config_*`` module, so that the
    type is known and building it names the missing dependency."""
    import pkgutil

    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        name = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(name)
        except Exception as e:  # an optional SDK (reachy2_sdk, pinocchio, ...) that is not installed
            log.debug("LeRobot device %s not importable (%s); registering its config only", name, e)
            sub = importlib.util.find_spec(name)
            for mod in pkgutil.iter_modules(sub.submodule_search_locations if sub else []):
                if mod.name.startswith("config"):
                    try:
                        importlib.import_module(f"{name}.{mod.name}")
                    except Exception as e2:
                        log.debug("LeRobot config %s.%s not importable: %s", name, mod.name, e2)


def make_lerobot_config(registry: str, type: str, **fields: Any) -> Any:
    """A LeRobot ``RobotConfig`` / ``TeleoperatorConfig`` from its registered ``type`` and fields."""
    import draccus

    import_lerobot()
    if registry == "robot":
        from lerobot.robots import RobotConfig as base
    elif registry == "teleop":
        from lerobot.teleoperators import TeleoperatorConfig as base
    else:
        raise ValueError(f"registry must be 'robot' or 'teleop', got {registry!r}")
    known = sorted(base.get_known_choices())
    if type not in known:
        raise ValueError(f"unknown LeRobot {registry} type {type!r}; registered: {known} "
                         f"(plugins register when their lerobot_{'robot' if registry == 'robot' else 'teleoperator'}_* "
                         "package is installed)")
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items() if v is not None}
    try:
        return draccus.decode(base, {"type": type, **fields})
    except Exception as e:  # draccus names the bad field; say which robot it was for
        raise ValueError(f"LeRobot {registry} {type!r}: {e}") from e


def dataset_features(observation_features: dict[str, Any], action_features: dict[str, Any]) -> dict[str, dict]:
    """LeRobot dataset features (dtype, shape, names) of a robot's observation and action."""
    state = [k for k, v in observation_features.items() if v is float]
    cams = {k: v for k, v in observation_features.items() if isinstance(v, tuple) and len(v) == 3}
    feats = {STATE_KEY: {"dtype": "float32", "shape": (len(state),), "names": state},
             ACTION_KEY: {"dtype": "float32", "shape": (len(action_features),), "names": list(action_features)}}
    for k, shape in cams.items():
        feats[IMAGE_PREFIX + k] = {"dtype": "video", "shape": tuple(shape), "names": ["height", "width", "channels"]}
    return feats


def calibration_limits(robot: Any, action_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Position limits of each ``<motor>.pos`` action in the robot's own units, from its calibration.

    Uses the robot's motor bus normalization (``bus._normalize``: degrees, -100..100 or 0..100, as the
    driver reads and writes), applied to each motor's calibrated range. Actions without a calibrated
    motor get +-inf (only the velocity limit applies to them).
    """
    low = np.full(len(action_names), -np.inf)
    high = np.full(len(action_names), np.inf)
    buses = [b for b in (getattr(robot, "bus", None), *getattr(robot, "buses", ())) if b is not None]
    for bus in buses:
        cal = getattr(bus, "calibration", None) or {}
        for i, name in enumerate(action_names):
            motor = name.removesuffix(".pos")
            if not name.endswith(".pos") or motor not in cal or motor not in bus.motors:
                continue
            mid = bus.motors[motor].id
            a = bus._normalize({mid: cal[motor].range_min})[mid]
            b = bus._normalize({mid: cal[motor].range_max})[mid]
            low[i], high[i] = min(a, b), max(a, b)
    return low, high


class NotCalibrated(RuntimeError):
    """The robot has no calibration to use (a file to write to its motors, or ``calibrate=true``)."""


class LeRobotRobot(Robot):
    """A LeRobot robot (by ``type`` and config fields) as a robopolicy :class:`Robot`.

    ``max_velocity`` / ``max_acceleration``: per action in robot units per second (degrees/s for
    SO-101 joints), a number for all or a list; ``action_low``/``action_high`` override the
    calibration limits. ``calibrate=True`` lets LeRobot run its interactive calibration at connect
    when the motors do not match the calibration file; otherwise a stored calibration file is written
    to the motors (LeRobot's "use the provided file" answer) and a missing one is an error.
    """

    def __init__(self, type: str, control_hz: float = 30.0, max_velocity: float | list[float] | None = 90.0,
                 max_acceleration: float | list[float] | None = None, action_low: list[float] | None = None,
                 action_high: list[float] | None = None, safe_action: str = "hold", calibrate: bool = False,
                 max_bus_errors: int = 3, connect_retries: int = 2, state_key: str = STATE_KEY,
                 extra_observation: Callable[[], dict[str, np.ndarray]] | None = None,
                 extra_features: dict[str, dict] | None = None, sync_io: bool = True, **fields: Any):
        import_lerobot()
        from lerobot.robots import make_robot_from_config

        self.config = make_lerobot_config("robot", type, **fields)
        self.robot = make_robot_from_config(self.config)
        self.type = type
        self.calibrate = calibrate
        self.sync_io = sync_io
        self.max_bus_errors = max_bus_errors
        self.connect_retries = connect_retries
        self.state_key = state_key
        obs_ft, act_ft = self.robot.observation_features, self.robot.action_features
        self.features = dataset_features(obs_ft, act_ft)
        # what the robot cannot sense but a simulated scene knows (an object's pose), added to every observation
        self.extra_observation = extra_observation
        self.extra_features = dict(extra_features or {})
        if (extra_observation is None) != (not self.extra_features):
            raise ValueError("extra_observation and extra_features go together (the features describe its keys)")
        self.features.update(self.extra_features)
        self.state_names = self.features[STATE_KEY]["names"]
        self.action_names = list(act_ft)
        self.cameras = [k.removeprefix(IMAGE_PREFIX) for k in self.features if k.startswith(IMAGE_PREFIX)]
        self._limits_override = (action_low, action_high)
        self._velocity, self._acceleration, self._safe = max_velocity, max_acceleration, safe_action
        self.spec = self._make_spec(control_hz)
        self.filter = self._make_filter()
        self._lock = threading.Lock()
        self.bus_lock = threading.Lock()  # the driver thread holds it per cycle: LeRobot's buses are not thread-safe
        self._command: np.ndarray | None = None
        self._wake = threading.Event()  # sync_io: a new command for the driver to send now
        self._state: RobotState | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fault: str | None = None
        self.bus_errors = 0
        self.sent: list[tuple[float, np.ndarray]] = []  # (time.monotonic(), action sent to the robot), bounded
        self.max_sent_log = 100_000

    # ---- spec and limits ----------------------------------------------------------------------------
    def _make_spec(self, control_hz: float) -> RobotSpec:
        low, high = calibration_limits(self.robot, self.action_names)
        lo_o, hi_o = self._limits_override
        if lo_o is not None:
            low = np.asarray(lo_o, dtype=np.float64).reshape(len(self.action_names))
        if hi_o is not None:
            high = np.asarray(hi_o, dtype=np.float64).reshape(len(self.action_names))
        keys = (self.state_key, *(IMAGE_PREFIX + c for c in self.cameras), *self.extra_features)
        return RobotSpec(name=f"lerobot:{self.type}", action_dim=len(self.action_names), action_low=low,
                         action_high=high, max_velocity=self._velocity, max_acceleration=self._acceleration,
                         control_hz=control_hz, safe_action=self._safe, observation_keys=keys)

    def _make_filter(self) -> SafetyFilter:
        s = self.spec
        return SafetyFilter(s.action_low, s.action_high, s.max_velocity, s.max_acceleration)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def connect(self) -> None:
        for attempt in range(1 + self.connect_retries):
            try:
                self._connect()
                return
            except NotCalibrated:
                raise
            except (ConnectionError, RuntimeError) as e:  # a status packet lost in the handshake/configuration
                self._release()
                if attempt == self.connect_retries:
                    raise
                log.warning("%s: connecting failed (%s); retrying", self.spec.name, e)

    def _connect(self) -> None:
        r = self.robot
        if self.calibrate:
            r.connect(calibrate=True)
        else:
            r.connect(calibrate=False)
            if not r.is_calibrated:
                if not r.calibration:
                    r.disconnect()
                    raise NotCalibrated(
                        f"{self.type} {self.config.id!r} has no calibration file at {r.calibration_fpath}: run "
                        f"`lerobot-calibrate --robot.type={self.type} --robot.port=<port> --robot.id={self.config.id}`"
                        " or pass robot.calibrate=true")
                bus = getattr(r, "bus", None)
                if bus is None:  # several buses or none: let the robot's own calibrate() decide
                    r.disconnect()
                    raise NotCalibrated(f"{self.type} {self.config.id!r} is not calibrated: pass robot.calibrate=true")
                log.info("motors differ from %s: writing the stored calibration to them", r.calibration_fpath)
                with bus.torque_disabled():
                    bus.write_calibration(r.calibration)
        # limits from the calibration now in force
        self.spec = self._make_spec(self.spec.control_hz)
        self.filter = self._make_filter()
        self._state = self._read()
        hold = self.hold_action(self._state)
        self.filter.reset(hold)
        with self._lock:
            self._command = hold
        self._stop.clear()
        self._thread = threading.Thread(target=self._drive, name=f"lerobot-{self.type}", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        """Stop the driver thread, then LeRobot's own disconnect (torque off if configured, port closed)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._release()

    def _release(self) -> None:
        """LeRobot's disconnect; when the bus cannot even disable torque, at least close the port."""
        bus = getattr(self.robot, "bus", None)
        try:
            if self.robot.is_connected:
                self.robot.disconnect()
        except Exception as e:
            log.error("LeRobot disconnect failed (%s); closing the port", e)
        if bus is not None and bus.port_handler.is_open:
            bus.port_handler.closePort()

    # ---- the robot interface -------------------------------------------------------------------------
    def read_state(self) -> RobotState | None:
        """The observation; with ``sync_io`` read from the bus now (a failed read counts as a bus error and
        returns the previous one, whose timestamp says how old it is)."""
        if self.sync_io and self._thread is not None and self.fault is None:
            try:
                with self.bus_lock:
                    self._state = self._read()
            except (ConnectionError, OSError, RuntimeError) as e:
                self.bus_errors += 1
                log.warning("%s read failed (%s); the previous observation stands", self.spec.name, e)
        return self._state

    def send_command(self, action: np.ndarray) -> None:
        if self.fault is not None:
            raise RuntimeError(f"{self.spec.name}: {self.fault}")
        a = np.asarray(action, dtype=np.float64).reshape(self.spec.action_dim)
        with self._lock:
            self._command = a.copy()
        if self.sync_io:
            self._wake.set()  # the driver sends it now instead of at its next period

    def stop(self) -> None:
        """Hold where the arm is now (an arm's stop is a hold with torque on)."""
        hold = self.hold_action(self._state)
        if hold is not None:
            with self._lock:  # the driver thread filters under the same lock
                self._command = hold
                self.filter.reset(hold)

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        if state is None:
            return None
        raw = state.info.get("raw")
        if raw is None:
            return None
        try:
            return np.array([float(raw[k]) for k in self.action_names], dtype=np.float64)
        except KeyError:
            return None  # actions that are not positions (e.g. a mobile base's velocities)

    def action_dict(self, action: np.ndarray) -> dict[str, float]:
        return {k: float(v) for k, v in zip(self.action_names, np.asarray(action).reshape(-1))}

    # ---- the driver thread ---------------------------------------------------------------------------
    def _read(self) -> RobotState:
        raw = self.robot.get_observation()
        obs = {self.state_key: np.array([raw[k] for k in self.state_names], dtype=np.float32)}
        for cam in self.cameras:
            obs[IMAGE_PREFIX + cam] = np.asarray(raw[cam], dtype=np.uint8)
        if self.extra_observation is not None:
            obs.update(self.extra_observation())
        self._seq += 1
        floats = {k: float(v) for k, v in raw.items() if k in self.state_names}
        return RobotState(obs, time.monotonic(), self._seq, {"raw": floats, "bus_errors": self.bus_errors})

    def _drive(self) -> None:
        """Every period: read, then send the latest command. A command from ``send_command`` under ``sync_io``
        wakes the thread early to send it alone; the period's schedule is kept."""
        period = 1.0 / self.spec.control_hz
        next_t = time.monotonic()
        last_sent = None
        errors = 0
        periodic = True
        while not self._stop.is_set():
            try:
                with self.bus_lock:
                    if periodic:
                        self._state = self._read()
                    now = time.monotonic()
                    with self._lock:
                        target = None if self._command is None else self._command.copy()
                        dt = period if last_sent is None else now - last_sent
                        cmd = None if target is None else self.filter(target, dt)
                    if cmd is not None:  # None: nothing commanded yet, or a non-finite target (dropped)
                        self.robot.send_action(self.action_dict(cmd))
                        last_sent = now
                        if len(self.sent) < self.max_sent_log:
                            self.sent.append((now, cmd))
                errors = 0
            except (ConnectionError, OSError, RuntimeError) as e:
                errors += 1
                self.bus_errors += 1
                log.warning("%s bus error %d/%d: %s", self.spec.name, errors, self.max_bus_errors, e)
                if errors >= self.max_bus_errors:
                    self.fault = f"bus failed {errors} times in a row: {e}"
                    log.error("%s: %s; no more commands are sent", self.spec.name, self.fault)
                    return
            if periodic:
                next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:
                next_t = time.monotonic()
                delay = 0.0
            woke = self._wake.wait(delay) if delay > 0 else False
            self._wake.clear()
            periodic = not woke


@dataclasses.dataclass
class LeRobotRobotConfig:
    """The ``robot=lerobot`` config keys besides LeRobot's own fields (which pass through unchanged)."""

    type: str
    control_hz: float = 30.0
    max_velocity: float | list[float] | None = 90.0
    max_acceleration: float | list[float] | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    safe_action: str = "hold"
    calibrate: bool = False
    max_bus_errors: int = 3
    connect_retries: int = 2
    sync_io: bool = True  # read_state() reads now, send_command() sends now (False: only at control_hz)


__all__ = ["LeRobotRobot", "LeRobotRobotConfig", "NotCalibrated", "calibration_limits", "dataset_features", "import_lerobot",
           "make_lerobot_config"]
