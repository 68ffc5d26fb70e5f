"""The simulated Feetech bus against the Feetech SDK's own packet handler and LeRobot's motor bus.

Every result here is the SDK's (``scservo_sdk``) or LeRobot's (``FeetechMotorsBus``), over a real
pseudo-terminal opened by pyserial: nothing between the host code and the simulated servos is ours.
"""

from __future__ import annotations

import json
import math
import time

import mujoco  # noqa: F401  (installed by `make test`; a missing one fails)
import numpy as np
import pytest
import scservo_sdk as scs  # the lerobot extra is part of `make test`: missing, it must fail

from robopolicy.robots.feetech_sim import (  # noqa: E402
    ERRBIT_OVERLOAD,
    GOAL_POSITION,
    HOMING_OFFSET,
    LOCK,
    PRESENT_POSITION,
    SO101_RAW_AT_ZERO,
    FeetechBusSimulator,
    apply_calibration,
    checksum,
    so101_calibration,
)
from robopolicy.sim.so101 import HOME, JOINTS  # noqa: E402

IDS = (1, 2, 3, 4, 5, 6)


@pytest.fixture
def bus():
    with FeetechBusSimulator(raw_at_zero=SO101_RAW_AT_ZERO) as b:
        yield b


@pytest.fixture
def sdk(bus):
    port = scs.PortHandler(bus.port)
    assert port.openPort()
    yield port, scs.PacketHandler(0)
    port.closePort()


def test_ping_reads_the_model_number_and_a_missing_id_times_out(bus, sdk):
    port, ph = sdk
    for i in IDS:
        assert ph.ping(port, i) == (777, scs.COMM_SUCCESS, 0)
    model, result, _ = ph.ping(port, 9)
    assert result == scs.COMM_RX_TIMEOUT, ph.getTxRxResult(result)
    assert model == 0


def test_checksum_matches_the_sdk_and_a_corrupt_instruction_is_ignored(bus, sdk):
    port, ph = sdk
    # the SDK computes the checksum of what it sends; ours must agree on the same bytes
    packet = [0xFF, 0xFF, 1, 4, scs.INST_READ, PRESENT_POSITION, 2, 0]
    ph.txPacket(port, packet)
    port.is_using = False
    assert packet[-1] == checksum(packet[2:-1])
    port.setPacketTimeout(8)
    _, result = ph.rxPacket(port)
    assert result == scs.COMM_SUCCESS
    # the same request with a wrong checksum: the servo drops it and the SDK times out
    bad = bytes([0xFF, 0xFF, 1, 4, scs.INST_READ, PRESENT_POSITION, 2, packet[-1] ^ 0xFF])
    before = bus.counters["bad_checksum"]
    port.writePort(bad)
    port.setPacketTimeout(8)
    _, result = ph.rxPacket(port)
    assert result == scs.COMM_RX_TIMEOUT
    assert bus.counters["bad_checksum"] == before + 1


def test_a_corrupt_reply_is_the_sdks_rx_corrupt(bus, sdk):
    port, ph = sdk
    bus.corrupt_next_replies(1)
    _, result, _ = ph.read2ByteTxRx(port, 1, PRESENT_POSITION)
    assert result == scs.COMM_RX_CORRUPT, ph.getTxRxResult(result)
    _, result, _ = ph.read2ByteTxRx(port, 1, PRESENT_POSITION)  # the next one is fine again
    assert result == scs.COMM_SUCCESS


def test_read_write_and_read_only_registers(bus, sdk):
    port, ph = sdk
    assert ph.write1ByteTxRx(port, 3, 21, 16) == (scs.COMM_SUCCESS, 0)  # P_Coefficient
    assert ph.read1ByteTxRx(port, 3, 21) == (16, scs.COMM_SUCCESS, 0)
    present, _, _ = ph.read2ByteTxRx(port, 3, PRESENT_POSITION)
    ph.write2ByteTxRx(port, 3, PRESENT_POSITION, (present + 500) % 4096)  # read-only: ignored
    again, _, _ = ph.read2ByteTxRx(port, 3, PRESENT_POSITION)
    assert abs(again - present) < 30
    # status return level 0: writes are not answered (the SDK waits in vain), reads still are
    assert ph.write1ByteTxRx(port, 3, 8, 0)[0] == scs.COMM_RX_TIMEOUT  # in force for its own reply
    assert ph.write1ByteTxRx(port, 3, 21, 20)[0] == scs.COMM_RX_TIMEOUT
    assert ph.read1ByteTxRx(port, 3, 21) == (20, scs.COMM_SUCCESS, 0)


def test_sync_read_and_sync_write_move_the_simulated_joints(bus, sdk):
    port, ph = sdk
    reader = scs.GroupSyncRead(port, ph, PRESENT_POSITION, 2)
    for i in IDS:
        reader.addParam(i)
    assert reader.txRxPacket() == scs.COMM_SUCCESS
    q = bus.joint_positions()
    for i, servo in bus.servos.items():  # the limp arm sags a little between the reply and this read
        assert abs(reader.getData(i, PRESENT_POSITION, 2) - servo.present_from_angle(q[servo.joint])) <= 5
    # torque on for the pan joint, then a sync write of its goal 200 ticks away
    ph.write1ByteTxRx(port, 1, 40, 1)
    start = reader.getData(1, PRESENT_POSITION, 2)
    writer = scs.GroupSyncWrite(port, ph, GOAL_POSITION, 2)
    for i in IDS:
        goal = start + 200 if i == 1 else reader.getData(i, PRESENT_POSITION, 2)
        writer.addParam(i, [scs.SCS_LOBYTE(goal), scs.SCS_HIBYTE(goal)])
    assert writer.txPacket() == scs.COMM_SUCCESS
    deadline = 50
    while deadline:
        assert reader.txRxPacket() == scs.COMM_SUCCESS
        if abs(reader.getData(1, PRESENT_POSITION, 2) - (start + 200)) < 10:
            break
        deadline -= 1
        time.sleep(0.02)
    assert deadline, "the pan joint never reached its sync-written goal"
    # the position servo overshoots a little (the model's kp and damping), around 200 ticks = 0.31 rad
    assert math.isclose(bus.joint_positions()[0] - q[0], 200 * 2 * math.pi / 4096, abs_tol=0.08)


def test_sync_read_with_a_silent_servo_is_the_sdks_timeout(bus, sdk):
    port, ph = sdk
    bus.mute(4)
    reader = scs.GroupSyncRead(port, ph, PRESENT_POSITION, 2)
    for i in IDS:
        reader.addParam(i)
    assert reader.txRxPacket() == scs.COMM_RX_TIMEOUT


def test_error_bits_reach_the_sdk_and_lerobot_raises_on_them(bus, sdk):
    port, ph = sdk
    bus.set_error_bits(2, ERRBIT_OVERLOAD)
    _, result, error = ph.read2ByteTxRx(port, 2, PRESENT_POSITION)
    assert result == scs.COMM_SUCCESS and error == ERRBIT_OVERLOAD
    assert ph.getRxPacketError(error) == "[RxPacketError] Overload error!"


def lerobot_bus(port: str, calibration=None):
    from robopolicy.robots.lerobot_robot import import_lerobot

    import_lerobot()
    from lerobot.motors import Motor, MotorNormMode
    from lerobot.motors.feetech import FeetechMotorsBus

    motors = {name: Motor(i, "sts3215", MotorNormMode.DEGREES) for i, name in zip(IDS, JOINTS)}
    return FeetechMotorsBus(port, motors, calibration)


def connect_handshake(b, attempts: int = 2) -> None:
    """LeRobot's ``connect()`` (ping every motor, model numbers, firmware), retried once like
    ``LeRobotRobot.connect()`` does: the simulator answers from a thread of this process, and on a loaded 2-core
    machine one status packet can miss the SDK's ~50 ms window, as a packet on a physical bus occasionally does."""
    for attempt in range(attempts):
        try:
            b.connect()
            return
        except (ConnectionError, RuntimeError):
            if b.is_connected:  # the port opened, the handshake failed: close it for the next try
                b.port_handler.closePort()
            if attempt == attempts - 1:
                raise


def settled_position(b, motor: str, timeout_s: float = 5.0) -> int:
    """Present_Position once two reads 100 ms apart agree within a tick: the simulated arm starts limp and sags
    under gravity, so a register test that compares two reads must not race the motion (CI caught a 4-tick sag)."""
    deadline = time.monotonic() + timeout_s
    last = b.read("Present_Position", motor, normalize=False)
    while True:
        time.sleep(0.1)
        now = b.read("Present_Position", motor, normalize=False)
        if abs(now - last) <= 1:
            return now
        assert time.monotonic() < deadline, f"{motor} still moving after {timeout_s} s ({last} -> {now})"
        last = now


def test_lerobot_handshake_homing_offset_sign_and_eeprom_lock(bus):
    b = lerobot_bus(bus.port)
    connect_handshake(b)  # pings every motor, checks model numbers and firmware versions
    try:
        before = settled_position(b, "elbow_flex")  # the limp arm sags after power-on: wait until it rests
        b.write("Homing_Offset", "elbow_flex", -100)  # sign-magnitude, bit 11
        assert bus.servos[3].get(HOMING_OFFSET, 2) == 100 | (1 << 11)
        after = b.read("Present_Position", "elbow_flex", normalize=False)
        assert abs((after - before) % 4096 - 100) <= 3  # Present = Actual - Homing_Offset
        # EEPROM written with Lock = 1 does not survive a power cycle; with Lock = 0 it does
        assert bus.servos[3].get(LOCK, 1) == 1
        bus.servos[3].power_cycle()
        assert b.read("Homing_Offset", "elbow_flex", normalize=False) == 0
        b.disable_torque("elbow_flex")  # LeRobot unlocks (Lock = 0) with torque off
        b.write("Homing_Offset", "elbow_flex", -100)
        bus.servos[3].power_cycle()
        assert b.read("Homing_Offset", "elbow_flex", normalize=False) == -100
    finally:
        b.disconnect(disable_torque=False)


def test_lerobot_baud_rate_mismatch_is_silence(bus):
    b = lerobot_bus(bus.port)
    connect_handshake(b)
    try:
        b.set_baudrate(500_000)  # the host changes speed, the servos do not
        assert b.ping("shoulder_pan") is None
        assert bus.counters["wrong_baud"] > 0
        b.set_baudrate(1_000_000)
        assert b.ping("shoulder_pan") == 777
    finally:
        b.disconnect(disable_torque=False)


def test_lerobot_calibration_flow_on_the_simulated_leader(tmp_path, monkeypatch):
    """SO101Leader.calibrate() end to end: half-turn homing, then a scripted operator sweeps each joint."""
    from robopolicy.robots.lerobot_robot import make_lerobot_config

    with FeetechBusSimulator(raw_at_zero=SO101_RAW_AT_ZERO, kinematic=True) as leader_bus:
        leader_bus.set_joint_positions(HOME)
        expected = so101_calibration(leader_bus, home=HOME)
        from lerobot.teleoperators import make_teleoperator_from_config

        cfg = make_lerobot_config("teleop", "so101_leader", port=leader_bus.port, id="sim_leader",
                                  calibration_dir=tmp_path)
        leader = make_teleoperator_from_config(cfg)
        sim = leader_bus.sim
        poses = [HOME.copy()]
        for j in range(len(JOINTS)):
            if JOINTS[j] == "wrist_roll":
                continue
            for limit in (sim.joint_low[j], sim.joint_high[j]):
                q = poses[-1].copy()
                q[j] = limit
                poses.append(q)
        script = iter(poses)

        def operator_step() -> bool:  # LeRobot polls "was ENTER pressed" once per reading
            q = next(script, None)
            if q is None:
                return True
            leader_bus.set_joint_positions(q)
            return False

        import lerobot.motors.motors_bus as motors_bus

        monkeypatch.setattr("builtins.input", lambda *a: "")
        monkeypatch.setattr(motors_bus, "enter_pressed", operator_step)
        leader.connect(calibrate=True)
        try:
            saved = json.loads((tmp_path / "sim_leader.json").read_text())
            for name, cal in expected.items():
                if name == "wrist_roll":
                    assert (saved[name]["range_min"], saved[name]["range_max"]) == (0, 4095)
                    continue
                assert saved[name]["homing_offset"] == cal["homing_offset"], name
                assert abs(saved[name]["range_min"] - cal["range_min"]) <= 2, name
                assert abs(saved[name]["range_max"] - cal["range_max"]) <= 2, name
            assert leader.is_calibrated
            # the leader now reads the pose the operator holds, in LeRobot's units
            q = HOME.copy()
            q[0] = 0.5
            leader_bus.set_joint_positions(q)
            action = leader.get_action()
            assert math.isclose(action["shoulder_pan.pos"], math.degrees(0.5), abs_tol=0.5)
        finally:
            leader.disconnect()


def test_stored_calibration_helpers_agree_with_the_servo(bus):
    cal = so101_calibration(bus)
    apply_calibration(bus, cal)
    for name, c in cal.items():
        servo = bus.servos[c["id"]]
        assert servo.present_from_angle(0.0) == 2047  # the calibration pose reads half a turn
        lo = servo.present_from_angle(bus.sim.joint_low[servo.joint])
        assert name == "wrist_roll" or abs(lo - c["range_min"]) <= 1
    assert np.all(np.diff([c["id"] for c in cal.values()]) == 1)


def test_an_in_process_bus_shortens_the_gil_switch_interval_and_restores_it():
    """The bus thread must get the GIL back within a servo's reply window while the host spins on the port."""
    import sys

    before = sys.getswitchinterval()
    with FeetechBusSimulator() as first, FeetechBusSimulator(kinematic=True) as second:
        assert sys.getswitchinterval() <= FeetechBusSimulator.SWITCH_INTERVAL_S
        second.close()  # one bus still running: still short
        assert sys.getswitchinterval() <= FeetechBusSimulator.SWITCH_INTERVAL_S
        assert first.port
    assert sys.getswitchinterval() == before
