"""A simulated Feetech STS3215 servo bus behind a pseudo-terminal, backed by the MuJoCo SO-101.

The host side opens the pty's slave path like a USB serial adapter (``/dev/ttyACM0``), so the code
under test is the unmodified chain a physical arm uses: LeRobot's ``SO101Follower`` ->
``FeetechMotorsBus`` -> the Feetech SDK (``scservo_sdk``: ``PortHandler`` over pyserial,
``PacketHandler``, ``GroupSyncRead``/``GroupSyncWrite``). pyserial's termios calls (raw mode,
1 Mbaud via ``B1000000``) work on a Linux pty, so no port-layer shim is needed; the simulator reads
the speed the host set and ignores traffic at a baud rate its servos are not set to, as a real bus would.

Protocol 0 (STS/SMS series): ``FF FF id len instr params.. checksum`` with
``checksum = ~(id + len + instr + params) & 0xFF``. Emulated: PING (also broadcast), READ, WRITE,
REG_WRITE/ACTION, SYNC_READ, SYNC_WRITE; status packets with the error bits of the servo; a packet
with a bad checksum or for an ID that is not on the bus gets no reply (the SDK then reports its own
COMM_RX_TIMEOUT); status return level 0 silences write replies.

The register map is LeRobot's ``STS_SMS_SERIES_CONTROL_TABLE`` (addresses checked against
``lerobot/motors/feetech/tables.py``). Positions are encoder ticks, 4096 per turn, with
``Present_Position = Actual_Position - Homing_Offset`` (mod 4096); ``Homing_Offset`` is
sign-magnitude with bit 11 as the sign, velocities and positions with bit 15, load with bit 10.
Goals are limited to [Min_Position_Limit, Max_Position_Limit] in position mode. Writing 1 to
``Torque_Enable`` makes the servo hold where it is (goal := present). EEPROM values (below address
40) survive :meth:`SimulatedServo.power_cycle` only when written with ``Lock`` = 0, as on the servo.

Fault injection for tests: :meth:`FeetechBusSimulator.set_error_bits`, ``mute`` (a servo stops
answering), ``corrupt_next_replies`` (flip the checksum of replies).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Sequence

import numpy as np

from robopolicy.sim.so101 import JOINTS, SO101Sim
from robopolicy.sim.so101_pick import SO101PickEnv

INST_PING, INST_READ, INST_WRITE, INST_REG_WRITE, INST_ACTION = 1, 2, 3, 4, 5
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83
BROADCAST_ID = 0xFE
TICKS_PER_TURN = 4096
STS3215_MODEL_NUMBER = 777
ERRBIT_VOLTAGE, ERRBIT_ANGLE, ERRBIT_OVERHEAT, ERRBIT_OVERELE, ERRBIT_OVERLOAD = 1, 2, 4, 8, 32

# Addresses (LeRobot's STS_SMS_SERIES_CONTROL_TABLE).
FIRMWARE_MAJOR, FIRMWARE_MINOR, MODEL_NUMBER, ID_ADDR, BAUD_RATE = 0, 1, 3, 5, 6
RESPONSE_STATUS_LEVEL, MIN_POSITION_LIMIT, MAX_POSITION_LIMIT = 8, 9, 11
HOMING_OFFSET, OPERATING_MODE, EEPROM_END = 31, 33, 40
TORQUE_ENABLE, GOAL_POSITION, LOCK = 40, 42, 55
PRESENT_POSITION, PRESENT_VELOCITY, PRESENT_LOAD, PRESENT_VOLTAGE, PRESENT_TEMPERATURE = 56, 58, 60, 62, 63
STATUS, MOVING, PRESENT_CURRENT = 65, 66, 69
READ_ONLY = set(range(0, 5)) | set(range(56, 71))

BAUD_CODES = {1_000_000: 0, 500_000: 1, 250_000: 2, 128_000: 3, 115_200: 4, 57_600: 5, 38_400: 6, 19_200: 7}

# Factory values of the STS3215 (2-byte values little-endian: low byte first).
FACTORY = {
    FIRMWARE_MAJOR: (3, 1), FIRMWARE_MINOR: (10, 1), MODEL_NUMBER: (STS3215_MODEL_NUMBER, 2), BAUD_RATE: (0, 1),
    7: (250, 1), RESPONSE_STATUS_LEVEL: (1, 1), MIN_POSITION_LIMIT: (0, 2), MAX_POSITION_LIMIT: (4095, 2),
    13: (70, 1), 14: (140, 1), 15: (40, 1), 16: (1000, 2), 18: (12, 1), 19: (44, 1), 20: (47, 1),
    21: (32, 1), 22: (32, 1), 23: (0, 1), 24: (16, 2), 26: (1, 1), 27: (1, 1), 28: (500, 2), 30: (1, 1),
    HOMING_OFFSET: (0, 2), OPERATING_MODE: (0, 1), 34: (20, 1), 35: (200, 1), 36: (80, 1), 37: (10, 1),
    38: (200, 1), 39: (200, 1), TORQUE_ENABLE: (0, 1), 41: (0, 1), GOAL_POSITION: (0, 2), 44: (0, 2),
    46: (0, 2), 48: (1000, 2), LOCK: (1, 1), PRESENT_VOLTAGE: (120, 1), PRESENT_TEMPERATURE: (30, 1),
    80: (1, 1), 81: (32, 1), 82: (50, 1), 84: (254, 1), 85: (254, 1),
}


def checksum(body: Sequence[int]) -> int:
    """Feetech protocol 0 checksum over ID, LENGTH, INSTRUCTION/ERROR and parameters."""
    return ~sum(body) & 0xFF


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    return (-value | (1 << sign_bit)) if value < 0 else value


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    return -(raw & ~(1 << sign_bit)) if raw & (1 << sign_bit) else raw


def status_packet(servo_id: int, error: int, params: Sequence[int] = ()) -> bytes:
    body = [servo_id, len(params) + 2, error, *params]
    return bytes([0xFF, 0xFF, *body, checksum(body)])


@dataclasses.dataclass
class SimulatedServo:
    """The register file of one STS3215 and its link to one simulated joint.

    ``raw_at_zero`` is the encoder reading when the joint is at angle zero: arbitrary on a freshly
    assembled arm (where the horn was mounted), which is what calibration's homing offset cancels.
    """

    servo_id: int
    joint: int
    raw_at_zero: int = 2048
    memory: bytearray = dataclasses.field(default_factory=lambda: bytearray(256))
    saved_eeprom: bytes = b""
    error_bits: int = 0
    muted: bool = False
    pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION

    def __post_init__(self) -> None:
        for addr, (value, n) in FACTORY.items():
            self.memory[addr:addr + n] = int(value).to_bytes(n, "little")
        self.memory[ID_ADDR] = self.servo_id
        self.saved_eeprom = bytes(self.memory[:EEPROM_END])

    def get(self, addr: int, n: int) -> int:
        return int.from_bytes(self.memory[addr:addr + n], "little")

    def set(self, addr: int, n: int, value: int) -> None:
        self.memory[addr:addr + n] = int(value).to_bytes(n, "little")

    @property
    def homing_offset(self) -> int:
        return decode_sign_magnitude(self.get(HOMING_OFFSET, 2), 11)

    def present_from_angle(self, angle: float) -> int:
        actual = self.raw_at_zero + round(angle * TICKS_PER_TURN / (2 * math.pi))
        return (actual - self.homing_offset) % TICKS_PER_TURN

    def angle_from_present(self, present: int) -> float:
        """The joint angle at which the servo reads ``present`` (the turn nearest angle zero)."""
        delta = (present + self.homing_offset - self.raw_at_zero) % TICKS_PER_TURN
        if delta >= TICKS_PER_TURN // 2:
            delta -= TICKS_PER_TURN
        return delta * 2 * math.pi / TICKS_PER_TURN

    def limited_goal(self, goal: int) -> int:
        lo, hi = self.get(MIN_POSITION_LIMIT, 2), self.get(MAX_POSITION_LIMIT, 2)
        if self.get(OPERATING_MODE, 1) == 0 and hi > lo:
            return min(max(goal, lo), hi)
        return goal

    def power_cycle(self) -> None:
        """Power off and on: EEPROM from its saved copy, RAM to factory values (torque off)."""
        self.memory = bytearray(256)
        for addr, (value, n) in FACTORY.items():
            self.memory[addr:addr + n] = int(value).to_bytes(n, "little")
        self.memory[:EEPROM_END] = self.saved_eeprom


_switch_interval_lock = threading.Lock()


class FeetechBusSimulator:
    """Servos on a pty, the joints they drive simulated by :class:`~robopolicy.sim.so101.SO101Sim`.

    Start it with :meth:`start` (a background thread: bus replies first, physics caught up to wall
    time in between); the host opens :attr:`port`. ``kinematic=True`` is a leader arm: no physics,
    an operator moves the joints with :meth:`set_joint_positions`.
    """

    def __init__(self, ids: Sequence[int] = (1, 2, 3, 4, 5, 6), raw_at_zero: Sequence[int] | None = None,
                 sim: SO101Sim | None = None, kinematic: bool = False, seed: int = 0, physics_chunk_s: float = 0.01):
        if sim is None:
            sim = SO101Sim(scene="arm", kinematic=True) if kinematic else SO101PickEnv().sim
            sim.reset(seed)
        self.sim = sim
        raw = raw_at_zero if raw_at_zero is not None else [2048] * len(ids)
        if len(raw) != len(ids) or len(ids) > len(JOINTS):
            raise ValueError(f"{len(ids)} servo IDs for {len(JOINTS)} joints with {len(raw)} zero readings")
        self.servos = {i: SimulatedServo(i, j, int(r)) for j, (i, r) in enumerate(zip(ids, raw))}
        self.baud = 1_000_000
        self.physics_chunk_s = physics_chunk_s
        self.lock = threading.RLock()
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)  # no echo, no line discipline until the host configures the port
        self.port = os.ttyname(self.slave_fd)
        self._speed_to_baud = {getattr(termios, f"B{b}"): b for b in (
            9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000)
            if hasattr(termios, f"B{b}")}
        self._rx = bytearray()
        self._corrupt_replies = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {"packets": 0, "bad_checksum": 0, "wrong_baud": 0, "replies": 0, "sync_writes": 0,
                         "physics_dropped_s": 0.0}
        self.goal_log: list[tuple[float, dict[int, int]]] = []  # (time.monotonic(), id -> goal) per goal write
        self.log_goals = False
        for servo in self.servos.values():  # powered on: torque off (limp), goal where the joint is
            self.sim.set_torque(servo.joint, False)
            servo.set(GOAL_POSITION, 2, servo.present_from_angle(self.sim.joint_positions()[servo.joint]))

    # ---- lifecycle --------------------------------------------------------------------------------
    # A host polling the port (the SDK's rxPacket spins) holds the GIL; at Python's default 5 ms switch interval
    # each blocking call of the bus thread (select, read, write) waits up to 5 ms for it back, and a reply chain
    # missed the SDK's ~34 ms ping window (measured: p99 21 ms, 3 misses in 600 pings). A real servo answers in
    # microseconds, so while a bus thread runs in this process the interval is 0.5 ms (p99 1.3 ms, no misses).
    # Processes that must not be touched use :class:`BusProcess` instead.
    _threads_running = 0
    _saved_switch_interval = 0.005
    SWITCH_INTERVAL_S = 0.0005

    def start(self) -> FeetechBusSimulator:
        with _switch_interval_lock:
            if FeetechBusSimulator._threads_running == 0:
                FeetechBusSimulator._saved_switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self.SWITCH_INTERVAL_S, sys.getswitchinterval()))
            FeetechBusSimulator._threads_running += 1
        self._thread = threading.Thread(target=self.run, name="feetech-bus-sim", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
            with _switch_interval_lock:
                FeetechBusSimulator._threads_running -= 1
                if FeetechBusSimulator._threads_running == 0:
                    sys.setswitchinterval(FeetechBusSimulator._saved_switch_interval)
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> FeetechBusSimulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, max_runtime_s: float = math.inf) -> None:
        """Serve the bus and step the physics in real time until :meth:`close` (or ``max_runtime_s``)."""
        t0 = time.monotonic()
        sim_t0 = self.sim.time
        while not self._stop.is_set() and time.monotonic() - t0 < max_runtime_s:
            ready, _, _ = select.select([self.master_fd], [], [], self.physics_chunk_s)
            if ready:
                try:
                    data = os.read(self.master_fd, 4096)
                except OSError:  # slave closed under us
                    data = b""
                if data:
                    self.feed(data)
            with self.lock:  # catch the physics up with the wall clock (never more than 50 ms at once)
                behind = (time.monotonic() - t0) - (self.sim.time - sim_t0)
                n = min(int(behind / self.sim.timestep), int(0.05 / self.sim.timestep))
                if n > 0:
                    self._apply_goals()
                    self.sim.step(n)
                if behind > 0.05:  # a stalled process: do not try to replay the lost time
                    sim_t0 += behind - 0.05
                    self.counters["physics_dropped_s"] += behind - 0.05

    # ---- operator / test hooks ------------------------------------------------------------------
    def set_joint_positions(self, q: np.ndarray) -> None:
        with self.lock:
            self.sim.set_joint_positions(q)

    def joint_positions(self) -> np.ndarray:
        with self.lock:
            return self.sim.joint_positions()

    def set_error_bits(self, servo_id: int, bits: int) -> None:
        self.servos[servo_id].error_bits = bits

    def mute(self, servo_id: int, muted: bool = True) -> None:
        self.servos[servo_id].muted = muted

    def corrupt_next_replies(self, n: int = 1) -> None:
        self._corrupt_replies = n

    def calibration_ticks(self, servo_id: int, angle: float) -> int:
        """What the servo reads at joint ``angle`` with its current homing offset."""
        return self.servos[servo_id].present_from_angle(angle)

    # ---- the wire -----------------------------------------------------------------------------------
    def _host_baud(self) -> int | None:
        try:
            return self._speed_to_baud.get(termios.tcgetattr(self.slave_fd)[5])
        except termios.error:
            return None

    def feed(self, data: bytes) -> None:
        """Bytes from the host: parse complete packets and answer them."""
        host_baud = self._host_baud()
        if host_baud is not None and host_baud != self.baud:
            self.counters["wrong_baud"] += 1  # framing errors on a real bus: nothing understood
            return
        self._rx += data
        while True:
            start = self._rx.find(b"\xff\xff")
            if start < 0:  # keep a trailing 0xFF: it may start the next header
                del self._rx[:-1 if self._rx.endswith(b"\xff") else len(self._rx)]
                return
            del self._rx[:start]
            if len(self._rx) < 4:
                return
            length = self._rx[3]
            if length < 2:
                del self._rx[:2]
                continue
            total = length + 4
            if len(self._rx) < total:
                return
            packet = bytes(self._rx[:total])
            del self._rx[:total]
            if checksum(packet[2:-1]) != packet[-1]:
                self.counters["bad_checksum"] += 1  # a servo drops it silently
                continue
            self.counters["packets"] += 1
            reply = self._handle(packet[2], packet[4], packet[5:-1])
            if reply:
                if self._corrupt_replies > 0:
                    self._corrupt_replies -= 1
                    reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
                os.write(self.master_fd, reply)
                self.counters["replies"] += 1

    def _handle(self, target: int, instr: int, params: bytes) -> bytes:
        with self.lock:
            if instr == INST_SYNC_WRITE and len(params) >= 2:
                return self._sync_write(params)
            if instr == INST_SYNC_READ and len(params) >= 2:
                addr, n = params[0], params[1]
                return b"".join(self._read_reply(self.servos[i], addr, n) for i in params[2:]
                                if i in self.servos and not self.servos[i].muted)
            if target == BROADCAST_ID:
                if instr == INST_PING:
                    return b"".join(status_packet(s.servo_id, s.error_bits) for s in self.servos.values()
                                    if not s.muted)
                for s in self.servos.values():
                    self._execute(s, instr, params)
                return b""
            servo = self.servos.get(target)
            if servo is None or servo.muted:
                return b""  # nobody answers: the host times out
            if instr == INST_READ and len(params) == 2:
                return self._read_reply(servo, params[0], params[1])
            ok = self._execute(servo, instr, params)
            if not ok:
                return b""
            if instr == INST_PING or servo.get(RESPONSE_STATUS_LEVEL, 1) >= 1:
                return status_packet(servo.servo_id, servo.error_bits)
            return b""

    def _execute(self, servo: SimulatedServo, instr: int, params: bytes) -> bool:
        if instr == INST_PING:
            return True
        if instr == INST_WRITE and len(params) >= 2:
            self._write(servo, params[0], params[1:])
            return True
        if instr == INST_REG_WRITE and len(params) >= 2:
            servo.pending = (params[0], bytes(params[1:]))
            return True
        if instr == INST_ACTION:
            if servo.pending is not None:
                self._write(servo, *servo.pending)
                servo.pending = None
            return True
        return False

    def _sync_write(self, params: bytes) -> bytes:
        addr, n = params[0], params[1]
        body = params[2:]
        goals = {}
        for k in range(0, len(body) - n, n + 1):
            servo = self.servos.get(body[k])
            if servo is not None:
                self._write(servo, addr, body[k + 1:k + 1 + n])
                if addr == GOAL_POSITION:
                    goals[servo.servo_id] = servo.get(GOAL_POSITION, 2)
        self.counters["sync_writes"] += 1
        if goals and self.log_goals:
            self.goal_log.append((time.monotonic(), goals))
        return b""

    def _read_reply(self, servo: SimulatedServo, addr: int, n: int) -> bytes:
        self._refresh_present(servo)
        return status_packet(servo.servo_id, servo.error_bits, servo.memory[addr:addr + n])

    def _write(self, servo: SimulatedServo, addr: int, data: bytes) -> None:
        for k, byte in enumerate(data):
            a = addr + k
            if a in READ_ONLY or a > 255:
                continue
            if a == TORQUE_ENABLE:
                on = bool(byte)
                if on and not servo.get(TORQUE_ENABLE, 1):  # enabling holds the present position
                    self._refresh_present(servo)
                    servo.set(GOAL_POSITION, 2, servo.get(PRESENT_POSITION, 2))
                self.sim.set_torque(servo.joint, on)
            servo.memory[a] = byte
        if addr < EEPROM_END and servo.get(LOCK, 1) == 0:
            servo.saved_eeprom = bytes(servo.memory[:EEPROM_END])
        if addr == BAUD_RATE and servo.memory[BAUD_RATE] != BAUD_CODES.get(self.baud):
            codes = {v: k for k, v in BAUD_CODES.items()}
            self.baud = codes.get(servo.memory[BAUD_RATE], self.baud)  # the whole (simulated) bus follows
        self._apply_goals()  # a new goal, new limits or a new offset all move the target

    def _apply_goals(self) -> None:
        for servo in self.servos.values():
            goal = servo.limited_goal(decode_sign_magnitude(servo.get(GOAL_POSITION, 2), 15))
            self.sim.set_target(servo.joint, servo.angle_from_present(goal))

    def _refresh_present(self, servo: SimulatedServo) -> None:
        q = float(self.sim.joint_positions()[servo.joint])
        dq = float(self.sim.joint_velocities()[servo.joint])
        force = float(self.sim.actuator_forces()[servo.joint])
        limit = float(self.sim.force_limit[servo.joint])
        servo.set(PRESENT_POSITION, 2, servo.present_from_angle(q))
        velocity = round(dq * TICKS_PER_TURN / (2 * math.pi))
        servo.set(PRESENT_VELOCITY, 2, encode_sign_magnitude(max(-32767, min(32767, velocity)), 15))
        load = round(1000 * force / limit) if limit > 0 else 0
        servo.set(PRESENT_LOAD, 2, encode_sign_magnitude(max(-1000, min(1000, load)), 10))
        servo.set(PRESENT_CURRENT, 2, min(2000, round(abs(load) * 0.5)))  # 6.5 mA units, ~3.25 A at stall
        servo.memory[MOVING] = int(abs(velocity) > servo.memory[80])
        servo.memory[STATUS] = servo.error_bits


def so101_calibration(bus: FeetechBusSimulator, home: np.ndarray | None = None,
                      full_turn: str = "wrist_roll") -> dict[str, dict[str, int]]:
    """The calibration LeRobot's flow would produce on this simulated arm, as its JSON file holds it.

    Homing: the arm at ``home`` (the calibration pose) reads 2047 on every servo; ranges: each
    joint's limits in ticks; the full-turn motor gets 0..4095 as LeRobot sets it.
    """
    home = np.zeros(len(JOINTS)) if home is None else np.asarray(home)
    out = {}
    for servo in bus.servos.values():
        name = JOINTS[servo.joint]
        actual_home = servo.raw_at_zero + round(home[servo.joint] * TICKS_PER_TURN / (2 * math.pi))
        offset = actual_home - 2047

        def ticks(angle: float, offset: int = offset, servo: SimulatedServo = servo) -> int:
            actual = servo.raw_at_zero + round(angle * TICKS_PER_TURN / (2 * math.pi))
            return (actual - offset) % TICKS_PER_TURN

        lo, hi = ticks(bus.sim.joint_low[servo.joint]) + 1, ticks(bus.sim.joint_high[servo.joint]) - 1
        if name == full_turn:
            lo, hi = 0, TICKS_PER_TURN - 1
        out[name] = {"id": servo.servo_id, "drive_mode": 0, "homing_offset": int(offset),
                     "range_min": int(lo), "range_max": int(hi)}
    return out


def apply_calibration(bus: FeetechBusSimulator, calibration: dict[str, dict[str, int]]) -> None:
    """Write a calibration into the servos' EEPROM, as if a calibrated arm were plugged in."""
    with bus.lock:
        for cal in calibration.values():
            servo = bus.servos[cal["id"]]
            servo.set(HOMING_OFFSET, 2, encode_sign_magnitude(cal["homing_offset"], 11))
            servo.set(MIN_POSITION_LIMIT, 2, cal["range_min"])
            servo.set(MAX_POSITION_LIMIT, 2, cal["range_max"])
            servo.saved_eeprom = bytes(servo.memory[:EEPROM_END])
            servo.set(GOAL_POSITION, 2, servo.present_from_angle(bus.sim.joint_positions()[servo.joint]))
        bus._apply_goals()


# An assembled arm's encoders do not read 2048 at the calibration pose: the horns sit where they sit.
SO101_RAW_AT_ZERO = (2110, 1934, 2201, 1987, 2077, 1602)


def serve_bus_process(conn, kinematic: bool = False, seed: int = 0, calibrated: bool = True,
                      max_runtime_s: float = 600.0, raw_at_zero: Sequence[int] = SO101_RAW_AT_ZERO) -> None:
    """Process entry point: a simulated SO-101 bus; sends its port path (and calibration) on ``conn``,
    then answers ``("goal_log",)``, ``("joints",)``, ``("cube",)``, ``("set_joints", q)``, ``("log_goals", bool)``, ``("stop",)``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:  # servos are their own hardware: on a loaded machine the simulated ones must still answer in time
        os.nice(-10)
    except OSError:
        pass
    bus = FeetechBusSimulator(raw_at_zero=raw_at_zero, kinematic=kinematic, seed=seed)
    cal = so101_calibration(bus)
    if calibrated:
        apply_calibration(bus, cal)
    bus.start()
    conn.send({"port": bus.port, "calibration": cal})
    parent = os.getppid()
    t_end = time.monotonic() + max_runtime_s
    try:
        while time.monotonic() < t_end and os.getppid() == parent:
            if not conn.poll(0.1):
                continue
            msg = conn.recv()
            if msg[0] == "stop":
                break
            if msg[0] == "goal_log":
                conn.send(list(bus.goal_log))
            elif msg[0] == "counters":
                conn.send(dict(bus.counters, sim_time=bus.sim.time))
            elif msg[0] == "cube":
                with bus.lock:
                    conn.send(bus.sim.cube_position())
            elif msg[0] == "joints":
                conn.send(bus.joint_positions())
            elif msg[0] == "set_joints":
                bus.set_joint_positions(msg[1])
                conn.send(True)
            elif msg[0] == "log_goals":
                bus.log_goals = bool(msg[1])
                conn.send(True)
    except (EOFError, OSError):
        pass
    finally:
        bus.close()


class BusProcess:
    """A simulated SO-101 bus in its own (spawned) process: what a test's arm is plugged into."""

    def __init__(self, kinematic: bool = False, seed: int = 0, calibrated: bool = True, max_runtime_s: float = 600.0,
                 timeout_s: float = 60.0, raw_at_zero: Sequence[int] = SO101_RAW_AT_ZERO):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve_bus_process, args=(child, kinematic, seed, calibrated, max_runtime_s, tuple(raw_at_zero)),
                                   daemon=True)
        self.process.start()
        if not self.conn.poll(timeout_s):
            self.process.kill()
            raise RuntimeError(f"simulated bus did not start within {timeout_s} s")
        hello = self.conn.recv()
        self.port: str = hello["port"]
        self.calibration: dict[str, dict[str, int]] = hello["calibration"]

    def call(self, *msg):
        with self._lock:  # one request and its answer at a time (an operator thread, the test)
            self.conn.send(msg)
            return self.conn.recv()

    def joint_positions(self) -> np.ndarray:
        return self.call("joints")

    def set_joint_positions(self, q: np.ndarray) -> None:
        self.call("set_joints", np.asarray(q, dtype=np.float64))

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)

    def __enter__(self) -> BusProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m robopolicy.robots.feetech_sim``: a simulated SO-101 on a pty, for trying LeRobot's tools."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leader", action="store_true", help="a leader arm (kinematic, no physics)")
    p.add_argument("--uncalibrated", action="store_true", help="factory EEPROM (run lerobot-calibrate on it)")
    p.add_argument("--seconds", type=float, default=3600.0)
    a = p.parse_args(argv)
    bus = FeetechBusSimulator(raw_at_zero=SO101_RAW_AT_ZERO, kinematic=a.leader)
    if not a.uncalibrated:
        apply_calibration(bus, so101_calibration(bus))
    print(bus.port, flush=True)
    print(f"simulated SO-101 {'leader' if a.leader else 'follower'} bus on {bus.port}", file=sys.stderr)
    try:
        bus.run(max_runtime_s=a.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        bus.close()


if __name__ == "__main__":
    main()


__all__ = ["BusProcess", "FeetechBusSimulator", "SO101_RAW_AT_ZERO", "SimulatedServo", "apply_calibration",
           "checksum", "so101_calibration", "status_packet"]
