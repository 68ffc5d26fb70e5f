"""Crazyflie 2.x behind the :class:`~robopolicy.robots.base.Robot` interface, through cflib.

The driver connects by URI (``radio://0/80/2M/E7E7E7E7E7``), reads the state estimate from the log
subsystem and streams setpoints at ``control_hz`` from its own thread, re-sending the latest command
(the firmware's commander stops the motors when no setpoint arrives for a while, so a setpoint
stream must never pause). Safety, checked every streaming tick:

* no new command from the control loop for ``command_timeout_s`` -> the safe behaviour: ``"land"``
  (position setpoints descending from the last estimate to the ground at ``land_speed``, then stop) or
  ``"cut"`` (stop setpoint: motors off immediately);
* no log data for ``state_timeout_s`` (estimate stale) -> the same safe behaviour;
* link lost / disconnected -> no more commands can be sent; ``read_state`` returns None and the
  firmware's supervisor takes over in the setpoint modes: no setpoint for 500 ms -> level attitude, for
  2 s -> motors off (``COMMANDER_WDT_TIMEOUT_*`` in supervisor.c, recorded in
  ``hardware/crazyflie/firmware_types/firmware_names.json`` from the pinned firmware commit).

Action modes (``mode``), all in robot units:

* ``"position"``: (x, y, z, yaw_deg) world-frame setpoints (needs a position estimate: Flow/Lighthouse/mocap);
* ``"velocity"``: (vx, vy, vz, yawrate_deg_s) world-frame velocity setpoints;
* ``"attitude"``: (roll_deg, pitch_deg, yawrate_deg_s, thrust 0..60000) -- cflib's ``send_setpoint``. Pitch
  is right-handed (positive = nose down), converted to the firmware's legacy inverted pitch on the way out.
  The firmware's RPYT commander keeps the thrust locked until it sees a setpoint with thrust 0, so the driver
  sends one (0, 0, 0, 0) before the first command and after every stop;
* ``"motors"``: 4 normalized motor commands in [-1, 1] (the simulator's action), sent as
  ``motorPowerSet.m1..m4`` parameters. That override bypasses the firmware's supervisor and has **no
  watchdog on board**: if the link drops, the motors keep the last values. So this mode is for the bench
  with the propellers off only (``bench_props_off=True`` is required); every stop path sets m1..m4 = 0 and
  ``motorPowerSet.enable`` = 0 again. A policy acting on motors in flight runs *on board*
  (``hardware/crazyflie``), where the setpoint watchdog and the supervisor apply.

Observation ``observation.state`` (12): x, y, z [m], roll, pitch, yaw [deg], vx, vy, vz [m/s],
roll/pitch/yaw rates [deg/s] (``stateEstimate.*``, ``stabilizer.*``, ``gyro.*``). Pitch is right-handed
(positive = nose down): ``stabilizer.pitch`` is logged in the legacy CF2 frame "where pitch is inverted"
(stabilizer_types.h), so the driver negates it.

No hardware is needed for the tests: pass ``link_factory`` returning an object with cflib's
``Crazyflie`` surface (``open_link``, ``close_link``, ``connected``/``disconnected``/``connection_lost``/
``connection_failed`` callers, ``commander``, ``log.add_config``, ``param.set_value``) and
``log_config_factory`` in place of ``cflib.crazyflie.log.LogConfig``. The tests bind these fakes to
cflib's real signatures with ``unittest.mock.create_autospec``. cflib's table-of-contents cache goes to
``cache_dir`` (default: ``$XDG_CACHE_HOME/robopolicy/cflib`` or ``~/.cache/robopolicy/cflib``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.robots.base import Robot, RobotSpec, RobotState

STATE_KEY = "observation.state"
STATE_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "vx", "vy", "vz", "roll_rate", "pitch_rate", "yaw_rate")
# Two log blocks (a block carries at most 26 bytes = 6 floats).
LOG_BLOCKS = {
    "posvel": [("stateEstimate.x", 0), ("stateEstimate.y", 1), ("stateEstimate.z", 2),
                  ("stateEstimate.vx", 6), ("stateEstimate.vy", 7), ("stateEstimate.vz", 8)],
    "attitude": [("stabilizer.roll", 3), ("stabilizer.pitch", 4), ("stabilizer.yaw", 5),
               ("gyro.x", 9), ("gyro.y", 10), ("gyro.z", 11)],
}
MODES = {
    "position": (np.array([-3.0, -3.0, 0.0, -180.0]), np.array([3.0, 3.0, 2.0, 180.0])),
    "velocity": (np.array([-1.0, -1.0, -1.0, -90.0]), np.array([1.0, 1.0, 1.0, 90.0])),
    "attitude": (np.array([-30.0, -30.0, -200.0, 0.0]), np.array([30.0, 30.0, 200.0, 60000.0])),  # MAX_THRUST 60000
    "motors": (np.full(4, -1.0), np.full(4, 1.0)),
}
SAFE_BEHAVIOURS = ("land", "cut")
MOTOR_PWM_MAX = 65535
MOTOR_PARAMS = tuple(f"motorPowerSet.m{i}" for i in range(1, 5))
MOTOR_ENABLE_PARAM = "motorPowerSet.enable"
PARAMS_USED = (MOTOR_ENABLE_PARAM, *MOTOR_PARAMS)
LEGACY_INVERTED = ("stabilizer.pitch",)  # logged in the legacy CF2 frame, negated on the way in
FIRMWARE_SETPOINT_SHUTDOWN_S = 2.0  # supervisor: no setpoint for this long -> motors off (firmware_names.json)


def default_cache_dir() -> Path:
    """Per-user cache for cflib's log/param tables of contents (never the working directory)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robopolicy" / "cflib"


class CrazyflieError(RuntimeError):
    pass


class CrazyflieRobot(Robot):
    def __init__(self, uri: str = "radio://0/80/2M/E7E7E7E7E7", mode: str = "position", control_hz: float = 100.0,
                 log_hz: float = 100.0, command_timeout_s: float = 0.2, state_timeout_s: float = 0.5,
                 on_timeout: str = "land", land_speed: float = 0.3, connect_timeout_s: float = 10.0,
                 link_factory: Callable[[], Any] | None = None, log_config_factory: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, start_thread: bool = True,
                 cache_dir: str | Path | None = None, bench_props_off: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
        if mode == "motors" and not bench_props_off:
            raise ValueError("mode='motors' drives motorPowerSet, which bypasses the firmware's supervisor and has no "
                             "watchdog if the radio link drops; it is for the bench with the propellers off: pass "
                             "bench_props_off=True. Fly motor-level policies on board (hardware/crazyflie).")
        if on_timeout not in SAFE_BEHAVIOURS:
            raise ValueError(f"on_timeout must be one of {SAFE_BEHAVIOURS}, got {on_timeout!r}")
        low, high = MODES[mode]
        self.spec = RobotSpec(name=f"crazyflie-{mode}", action_dim=4, action_low=low, action_high=high,
                              control_hz=control_hz, safe_action="stop", observation_keys=(STATE_KEY,),
                              # position setpoints carry yaw in degrees: it wraps at ±180
                              angle_dims=(3,) if mode == "position" else (), angle_period=360.0)
        self.uri, self.mode = uri, mode
        self.log_hz = log_hz
        self.command_timeout_s, self.state_timeout_s = command_timeout_s, state_timeout_s
        self.on_timeout, self.land_speed = on_timeout, land_speed
        self.connect_timeout_s = connect_timeout_s
        self._link_factory, self._log_config_factory = link_factory, log_config_factory
        self.clock = clock
        self.start_thread = start_thread
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

        self.cf: Any = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._failed: str | None = None
        self._stop_thread = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = np.full(len(STATE_NAMES), np.nan)
        self._state_t: float | None = None
        self._block_t: dict[str, float] = {}
        self._seq = 0
        self._thrust_unlocked = False  # attitude mode: a zero-thrust setpoint was sent since the last stop
        self._command: np.ndarray | None = None
        self._command_t: float | None = None
        self.safe_mode: str | None = None  # None, "landing", "stopped"
        self._armed = False  # a command was accepted since connect / reset_safety: a stop then latches
        self._land_target: np.ndarray | None = None
        self.log_configs: list[Any] = []
        self.events: list[str] = []  # human-readable log of safety events (tests, post-mortem)

    # ---- connection ------------------------------------------------------------------------------
    def _default_link(self) -> Any:
        try:
            import cflib.crtp
            from cflib.crazyflie import Crazyflie
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CrazyflieError("cflib is not installed: pip install cflib") from e
        cflib.crtp.init_drivers()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return Crazyflie(rw_cache=str(self.cache_dir))

    def _log_config(self, name: str, period_ms: int) -> Any:
        if self._log_config_factory is not None:
            return self._log_config_factory(name=name, period_in_ms=period_ms)
        from cflib.crazyflie.log import LogConfig

        return LogConfig(name=name, period_in_ms=period_ms)

    def connect(self) -> None:
        self.cf = (self._link_factory or self._default_link)()
        self.cf.connected.add_callback(self._on_connected)
        self.cf.disconnected.add_callback(self._on_disconnected)
        self.cf.connection_lost.add_callback(self._on_lost)
        self.cf.connection_failed.add_callback(self._on_failed)
        self.cf.open_link(self.uri)
        deadline = time.monotonic() + self.connect_timeout_s
        while not self._connected.is_set():
            if self._failed is not None:
                raise CrazyflieError(f"{self.uri}: connection failed: {self._failed}")
            if time.monotonic() > deadline:
                self.cf.close_link()
                raise CrazyflieError(f"{self.uri}: not connected after {self.connect_timeout_s} s")
            time.sleep(0.01)
        period_ms = max(10, int(round(1000.0 / self.log_hz)))
        for name, variables in LOG_BLOCKS.items():
            lc = self._log_config(name, period_ms)
            for var, _ in variables:
                lc.add_variable(var, "float")
            self.cf.log.add_config(lc)
            lc.data_received_cb.add_callback(self._on_log)
            lc.start()
            self.log_configs.append(lc)
        if self.mode == "motors":  # bench only (bench_props_off): zero the overrides before enabling them
            self._zero_motor_params()
            self.cf.param.set_value(MOTOR_ENABLE_PARAM, "1")
        if self.start_thread:
            self._stop_thread.clear()
            self._thread = threading.Thread(target=self._stream, name="crazyflie-stream", daemon=True)
            self._thread.start()

    def _on_connected(self, uri: str) -> None:
        self._connected.set()

    def _on_disconnected(self, uri: str) -> None:
        self._connected.clear()
        self.events.append("disconnected")

    def _on_lost(self, uri: str, msg: str) -> None:
        self._connected.clear()
        self.events.append(f"connection lost: {msg}")
        if self.mode == "motors":
            self.events.append("motors mode: link lost while motorPowerSet overrides the motors; the firmware has "
                               "no watchdog for it, the motors keep their last values (bench, propellers off)")

    def _on_failed(self, uri: str, msg: str) -> None:
        self._failed = msg
        self.events.append(f"connection failed: {msg}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ---- state -----------------------------------------------------------------------------------
    def _on_log(self, timestamp: int, data: dict[str, float], logconf: Any) -> None:
        variables = LOG_BLOCKS.get(logconf.name)
        if variables is None:
            return
        now = self.clock()
        with self._lock:
            for var, idx in variables:
                if var in data:
                    value = float(data[var])
                    self._state[idx] = -value if var in LEGACY_INVERTED else value
            self._block_t[logconf.name] = now
            if len(self._block_t) == len(LOG_BLOCKS):
                self._state_t = min(self._block_t.values())
                self._seq += 1

    def read_state(self) -> RobotState | None:
        with self._lock:
            if not self.connected or self._state_t is None or not np.isfinite(self._state).all():
                return None
            return RobotState({STATE_KEY: self._state.astype(np.float32)}, self._state_t, self._seq,
                              info={"safe_mode": self.safe_mode})

    # ---- commands --------------------------------------------------------------------------------
    def send_command(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (4,) or not np.isfinite(a).all():
            raise ValueError(f"a Crazyflie command is 4 finite numbers, got {action!r}")
        with self._lock:
            if self.safe_mode is not None:  # once the safety stop engaged it stays engaged until reset_safety()
                return
            self._command = np.clip(a, self.spec.action_low, self.spec.action_high)
            self._command_t = self.clock()
            self._armed = True

    def reset_safety(self) -> None:
        """Re-arm after a safety stop (an operator decision; commands are ignored until then)."""
        with self._lock:
            self.safe_mode, self._land_target, self._command, self._command_t = None, None, None, None
            self._armed = False

    def stop(self) -> None:
        """Motors off. Once the drone has been commanded, the stop latches until :meth:`reset_safety`; before the
        first command (the control loop holds its safe action while it waits for the first chunk) nothing is
        latched, or a run could never take off."""
        with self._lock:
            if self._armed:
                self.safe_mode = "stopped"
            self._command = None
        self._send_stop()

    def _zero_motor_params(self) -> None:
        for name in MOTOR_PARAMS:
            self.cf.param.set_value(name, "0")

    def _send_stop(self) -> None:
        if self.cf is None or not self.connected:
            return
        if self.mode == "motors":
            self._zero_motor_params()
            self.cf.param.set_value(MOTOR_ENABLE_PARAM, "0")  # hand the motors back to the stabilizer
        self._thrust_unlocked = False
        self.cf.commander.send_stop_setpoint()

    def _send(self, a: np.ndarray) -> None:
        c = self.cf.commander
        if self.mode == "position":
            c.send_position_setpoint(float(a[0]), float(a[1]), float(a[2]), float(a[3]))
        elif self.mode == "velocity":
            c.send_velocity_world_setpoint(float(a[0]), float(a[1]), float(a[2]), float(a[3]))
        elif self.mode == "attitude":
            if not self._thrust_unlocked:  # the RPYT commander's thrust lock opens on a zero-thrust setpoint
                c.send_setpoint(0.0, 0.0, 0.0, 0)
                self._thrust_unlocked = True
            c.send_setpoint(float(a[0]), -float(a[1]), float(a[2]), int(a[3]))  # legacy inverted pitch
        else:  # motors (bench, props off): [-1, 1] -> PWM 0..65535
            pwm = np.clip(np.rint((a + 1.0) * 0.5 * MOTOR_PWM_MAX), 0, MOTOR_PWM_MAX).astype(int)
            for name, v in zip(MOTOR_PARAMS, pwm, strict=True):
                self.cf.param.set_value(name, str(int(v)))

    def tick(self) -> str:
        """One streaming period: safety checks, then (re)send the current setpoint. Returns what it did."""
        if self.cf is None or not self.connected:
            return "disconnected"
        now = self.clock()
        with self._lock:
            command, command_t, state_t = self._command, self._command_t, self._state_t
            state = self._state.copy()
            safe_mode = self.safe_mode
        if safe_mode == "stopped":
            self._send_stop()
            return "stopped"
        if safe_mode is None and command is not None:
            reason = None
            if now - command_t > self.command_timeout_s:
                reason = f"no command for {now - command_t:.3f} s"
            elif state_t is None or now - state_t > self.state_timeout_s:
                reason = "state estimate stale"
            if reason is not None:
                self.events.append(f"safety: {reason} -> {self.on_timeout}")
                with self._lock:
                    if self.on_timeout == "land" and np.isfinite(state[:3]).all() and state_t is not None:
                        self.safe_mode = "landing"
                        self._land_target = np.array([state[0], state[1], state[2], state[5]])
                    else:
                        self.safe_mode = "stopped"
                safe_mode = self.safe_mode
                if safe_mode == "stopped":
                    self._send_stop()
                    return "stopped"
        if safe_mode == "landing":
            target = self._land_target
            target[2] = max(0.0, target[2] - self.land_speed / self.spec.control_hz)
            if target[2] <= 0.05:
                with self._lock:
                    self.safe_mode = "stopped"
                self.events.append("landed -> stop")
                self._send_stop()
                return "stopped"
            self.cf.commander.send_position_setpoint(*(float(v) for v in target))
            return "landing"
        if command is None:
            return "idle"  # nothing commanded yet: send nothing (motors stay off)
        self._send(command)
        return "command"

    def _stream(self) -> None:
        period = 1.0 / self.spec.control_hz
        next_t = time.monotonic()
        while not self._stop_thread.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - a streaming error must not kill the safety loop silently
                self.events.append(f"stream error: {e!r}")
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        if self.mode == "position" and state is not None:
            s = state.observation[STATE_KEY]
            return np.array([s[0], s[1], s[2], s[5]], dtype=np.float64)
        if self.mode == "velocity":
            return np.zeros(4)
        return None

    def disconnect(self) -> None:
        try:
            self.stop()
        finally:
            self._stop_thread.set()
            if self._thread is not None:
                self._thread.join(timeout=1.0)
                self._thread = None
            if self.cf is not None:
                try:
                    self.cf.commander.send_notify_setpoint_stop()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
                self.cf.close_link()


__all__ = ["CrazyflieError", "CrazyflieRobot", "FIRMWARE_SETPOINT_SHUTDOWN_S", "LOG_BLOCKS", "MODES", "PARAMS_USED",
           "STATE_KEY", "STATE_NAMES", "default_cache_dir"]
