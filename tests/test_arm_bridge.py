"""Arm bridge message set over loopback ipc: state stream, latest-wins commands, watchdog, e-stop, validation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robopolicy.deploy.arm_bridge import (  # noqa: E402
    ArmBackend,
    ArmBridge,
    ArmClient,
    ArmSpec,
    KinematicArm,
    decode_arm,
    encode_arm,
    pack_frames,
    unpack_frames,
)
from robopolicy.deploy.protocol import ProtocolError  # noqa: E402
from tests.conftest import ipc_address  # noqa: E402


def addrs():
    base = ipc_address("arm")
    return f"{base}-s", f"{base}-c", f"{base}-r"


@pytest.fixture
def bridge():
    a = addrs()
    operator = ipc_address("arm-operator")  # in the tests' private (0700) ipc folder
    arm = KinematicArm(ArmSpec(dof=0, rate_hz=100.0, watchdog_s=0.15, max_step_pos=0.05))
    b = ArmBridge(arm, *a, operator_addr=operator)
    t = threading.Thread(target=b.run, kwargs={"max_runtime_s": 20.0}, daemon=True)
    t.start()
    client = ArmClient(*a, timeout_s=2.0, operator_addr=operator)
    yield b, arm, client
    client.close()
    b.stop()
    t.join(5)
    b.close()


def wait_for(pred, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_codec_roundtrip_and_rejections():
    frames = encode_arm("arm_cmd", 3, {"target": np.arange(6.0), "gripper": np.array([1.0])}, mode="ee_delta")
    msg = decode_arm(frames)
    assert msg.type == "arm_cmd" and msg.get("mode") == "ee_delta"
    np.testing.assert_array_equal(msg.arrays["target"], np.arange(6.0))
    bad = encode_arm("arm_cmd", 4, {"target": np.array([np.nan] * 6)}, mode="ee_delta")
    with pytest.raises(ProtocolError) as e:
        decode_arm(bad)
    assert e.value.kind == "nonfinite"
    with pytest.raises(ProtocolError):
        encode_arm("launch_missiles", 1)
    assert decode_arm(unpack_frames(pack_frames(frames))).arrays["gripper"][0] == 1.0
    with pytest.raises(ProtocolError):
        unpack_frames(b"\x93\x01\x02\x03")  # a list, but not of binary frames
    with pytest.raises(ProtocolError) as e:
        decode_arm([frames[0], b"\0" * 3, frames[2]])
    assert e.value.kind == "shape"


def test_state_commands_watchdog_and_estop(bridge):
    b, arm, client = bridge
    spec = client.hello()
    assert spec["rate_hz"] == 100.0 and "ee_delta" in spec["modes"]
    assert wait_for(lambda: client.poll_state() is not None)
    z0 = float(client.state.arrays["ee_pos"][2])
    # ee_pose target far away: approached at most max_step_pos per tick
    n = 0
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        client.send("ee_pose", np.array([0.0, 0.0, z0 + 0.2, 0, 0, 0, 1]), 1.0)
        n += 1
        time.sleep(0.01)
    assert wait_for(lambda: abs(client.poll_state().arrays["ee_pos"][2] - (z0 + 0.2)) < 1e-6)
    assert client.state.arrays["gripper"][0] == 1.0
    assert n < 100  # bounded traffic
    # watchdog: stale commands are not applied
    before = b.watchdog_holds
    time.sleep(0.3)
    assert b.watchdog_holds > before
    # NaN, wrong shape and unsupported mode are rejected on the arm side
    rejected = b.rejected
    client.push.send(pack_frames(encode_arm("arm_cmd", 99, {"target": np.zeros(3)}, mode="ee_delta")))
    assert wait_for(lambda: b.rejected >= rejected + 1)
    client.push.send(pack_frames(encode_arm("arm_cmd", 100, {"target": np.zeros(5)}, mode="joint")))
    assert wait_for(lambda: b.rejected >= rejected + 2)
    client.push.send(b"not msgpack frames")
    assert wait_for(lambda: b.rejected >= rejected + 3)
    # an empty gripper array and a zero quaternion are rejected too (they crashed the bridge / made its state NaN)
    client.push.send(pack_frames(encode_arm("arm_cmd", 101, {"target": np.zeros(6), "gripper": np.zeros(0)},
                                            mode="ee_delta")))
    assert wait_for(lambda: b.rejected >= rejected + 4)
    client.push.send(pack_frames(encode_arm("arm_cmd", 102, {"target": np.zeros(7)}, mode="ee_pose")))
    assert wait_for(lambda: b.rejected >= rejected + 5)
    assert np.isfinite(client.poll_state(0.1).arrays["ee_quat"]).all()
    # e-stop latches: commands are ignored until clear_estop
    client.estop()
    pos = client.poll_state(0.1).arrays["ee_pos"].copy()
    for _ in range(10):
        client.send("ee_delta", np.array([0.01, 0, 0, 0, 0, 0]), 1.0)
        time.sleep(0.01)
    state = client.poll_state(0.1)
    assert state.get("estopped") is True
    np.testing.assert_allclose(state.arrays["ee_pos"], pos)
    client.clear_estop()
    assert wait_for(lambda: client.poll_state().get("estopped") is False)
    for _ in range(5):
        client.send("ee_delta", np.array([0.01, 0, 0, 0, 0, 0]), 1.0)
        time.sleep(0.02)
    assert wait_for(lambda: client.poll_state().arrays["ee_pos"][0] > pos[0] + 0.005)
    # control channel rejects command types with an error reply
    with pytest.raises(ProtocolError):
        client.request("arm_state")


def test_client_times_out_without_an_arm():
    client = ArmClient(*addrs(), timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            client.hello()
        assert client.poll_state(0.05) is None
    finally:
        client.close()


def test_sim_arm_robot_with_kinematic_bridge_process():
    from robopolicy.robots.sim_arm import SimArm

    robot = SimArm(backend="kinematic", rate_hz=50.0, max_runtime_s=60.0)
    with robot:
        st = robot.read_state()
        assert st is not None and st.observation["observation.state"].shape == (8,)
        z0 = st.observation["observation.state"][2]
        assert robot.safe_command(st).tolist() == [0, 0, 0, 0, 0, 0, -1.0]
        for _ in range(10):
            robot.send_command(np.array([0, 0, 1.0, 0, 0, 0, 1.0]))
            time.sleep(0.03)
        assert wait_for(lambda: robot.read_state().observation["observation.state"][2] > z0 + 0.04)
        assert robot.read_state().observation["observation.state"][7] == 1.0


def test_reset_starts_a_new_episode_and_bad_resets_get_errors(bridge):
    b, arm, client = bridge
    assert wait_for(lambda: client.poll_state() is not None)
    for _ in range(5):
        client.send("ee_delta", np.array([0.02, 0, 0, 0, 0, 0]), 1.0)
        time.sleep(0.02)
    assert wait_for(lambda: client.poll_state().arrays["ee_pos"][0] > 0.01)
    assert client.reset(7) == 1
    assert wait_for(lambda: client.poll_state().get("episode") == 1)
    state = client.poll_state()
    np.testing.assert_allclose(state.arrays["ee_pos"], [0.0, 0.0, 1.0])  # back at the start pose
    assert state.arrays["gripper"][0] == -1.0
    with pytest.raises(ProtocolError, match="seed"):
        client.request("reset", seed="seven")
    with pytest.raises(ProtocolError, match="seed"):
        client.request("reset")
    assert client.request("ping").type == "pong"  # the bridge kept serving


def test_an_arm_without_reset_answers_unsupported():
    class RealishArm(KinematicArm):
        reset = ArmBackend.reset  # what a real arm's bridge inherits: no episode resets

    a = addrs()
    operator = ipc_address("arm-operator")
    b = ArmBridge(RealishArm(ArmSpec(dof=0, rate_hz=100.0, name="real-arm")), *a, operator_addr=operator)
    t = threading.Thread(target=b.run, kwargs={"max_runtime_s": 10.0}, daemon=True)
    t.start()
    client = ArmClient(*a, timeout_s=2.0, operator_addr=operator)
    try:
        with pytest.raises(ProtocolError, match="unsupported.*real-arm"):
            client.reset(1)
        assert client.request("ping").type == "pong"
    finally:
        client.close()
        b.stop()
        t.join(5)
        b.close()


def test_sim_arm_robot_reset_returns_the_new_episodes_first_state():
    from robopolicy.robots.sim_arm import SimArm

    with SimArm(backend="kinematic", rate_hz=50.0, max_runtime_s=60.0) as robot:
        for _ in range(5):
            robot.send_command(np.array([1.0, 0, 0, 0, 0, 0, 1.0]))
            time.sleep(0.03)
        assert wait_for(lambda: robot.read_state().observation["observation.state"][0] > 0.04)
        state = robot.reset(11)
        assert state.info["episode"] == 1
        np.testing.assert_allclose(state.observation["observation.state"][:3], [0.0, 0.0, 1.0])


def test_only_the_operator_socket_clears_an_estop_or_resets(bridge, caplog):
    """Issue 27: the bridge accepted clear_estop and reset from anyone who reached its control socket."""
    b, arm, client = bridge
    assert wait_for(lambda: client.poll_state() is not None)
    robot_side = ArmClient(*client.addrs, timeout_s=2.0)  # no operator socket: a robot, not an operator
    try:
        robot_side.estop()  # anyone may stop the arm
        assert wait_for(lambda: client.poll_state().get("estopped") is True)
        with caplog.at_level("ERROR", logger="robopolicy.deploy.arm_bridge"):
            with pytest.raises(ProtocolError, match="forbidden.*operator socket"):
                robot_side.clear_estop()
            with pytest.raises(ProtocolError, match="forbidden"):
                robot_side.reset(3)
        assert "refused clear_estop" in caplog.text and "refused reset" in caplog.text
        assert b.forbidden == 2 and b.estopped and b.episode == 0
        assert robot_side.request("ping").type == "pong"  # and the bridge goes on serving
        client.clear_estop()  # the operator socket
        assert wait_for(lambda: client.poll_state().get("estopped") is False)
        assert client.reset(4) == 1
    finally:
        robot_side.close()


def test_operator_socket_must_be_private_ipc(tmp_path):
    a = addrs()
    with pytest.raises(ValueError, match="ipc"):
        ArmBridge(KinematicArm(), *a, operator_addr="tcp://127.0.0.1:0")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(PermissionError, match="group or others"):
        ArmBridge(KinematicArm(), *addrs(), operator_addr=f"ipc://{shared}/op.ipc")


def test_receiving_sockets_bound_message_size(bridge):
    """A frame over the limit never reaches the bridge (ZMQ_MAXMSGSIZE drops the sender); others carry on."""
    import zmq

    from robopolicy.deploy.arm_bridge import MAX_ARM_MESSAGE_BYTES

    b, arm, client = bridge
    for sock in (b.pull, b.rep, b.operator_rep, client.sub):
        assert 0 < sock.getsockopt(zmq.MAXMSGSIZE) <= 2 * MAX_ARM_MESSAGE_BYTES
    rejected = b.rejected
    ctx = zmq.Context()
    big = ctx.socket(zmq.PUSH)
    big.linger = 0
    big.connect(client.addrs[1])
    big.send(b"x" * (3 * MAX_ARM_MESSAGE_BYTES))
    time.sleep(0.3)
    big.close(0)
    ctx.term()
    assert b.rejected == rejected  # dropped by libzmq before the bridge saw (and buffered) it
    assert client.request("ping").type == "pong"


def test_leader_stream_socket_bounds_message_size():
    import zmq

    from robopolicy.deploy.arm_bridge import MAX_STREAM_FRAME_BYTES
    from robopolicy.teleop.zmq_leader import ZmqLeaderDevice

    device = ZmqLeaderDevice(ipc_address("leader"))
    device.start()
    try:
        assert device._sock.getsockopt(zmq.MAXMSGSIZE) == MAX_STREAM_FRAME_BYTES
    finally:
        device.close()


def test_a_bad_state_message_is_counted_and_the_last_good_state_kept():
    import zmq

    from tests.test_hostile_messages import nested_header

    a = addrs()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(a[0])
    client = ArmClient(*a, timeout_s=0.5)
    try:
        good = pack_frames(encode_arm("arm_state", 1, {"ee_pos": np.zeros(3)}, t=0.0))
        assert wait_for(lambda: (pub.send(good), client.poll_state(0.05))[1] is not None)
        for bad in (pack_frames([nested_header(1000)]), b"\xc1", pack_frames([b"\x80"])):
            pub.send(bad)
            time.sleep(0.05)
            assert client.poll_state(0.05).seq == 1
        assert client.invalid_states >= 3
    finally:
        client.close()
        pub.close(0)
        ctx.term()
