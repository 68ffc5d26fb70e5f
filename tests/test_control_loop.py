"""Interpolation, safety filter, chunk scheduling, and the control loop against a live server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robopolicy.deploy.adapter import adapter_from_policy, load_policy_adapter
from robopolicy.deploy.client import ControlLoop, ControlLoopConfig, PolicyClient
from robopolicy.deploy.fake import RampPolicy, ramp_spec
from robopolicy.deploy.interpolation import Waypoints, interpolate
from robopolicy.deploy.operator import send_operator_command
from robopolicy.deploy.safety import EStop, SafetyFilter, Watchdog
from robopolicy.deploy.scheduling import ChunkScheduler
from robopolicy.deploy.server import PolicyServer
from robopolicy.deploy.timing import PeriodRecorder, precise_wait
from robopolicy.policies.registry import load_policy
from robopolicy.robots.base import EchoRobot

torch.set_num_threads(1)


# ---- interpolation ------------------------------------------------------------------------------
def test_interpolation_and_validity():
    wp = Waypoints(np.array([1.0, 1.1, 1.2]), np.array([[0.0], [1.0], [3.0]]), validity_s=0.05)
    assert wp(0.99) is None  # before the first waypoint: nothing
    np.testing.assert_allclose(wp(1.05), [0.5])
    np.testing.assert_allclose(wp(1.15), [2.0])
    np.testing.assert_allclose(wp(1.24), [3.0])  # held within validity
    assert wp(1.26) is None  # past validity: never executed
    np.testing.assert_allclose(interpolate(np.array([0.0]), np.array([[2.0, 3.0]]), 5.0), [2.0, 3.0])
    wp.prune(1.15)
    assert len(wp) == 2 and wp.t_start == 1.1
    with pytest.raises(ValueError):
        Waypoints(np.array([1.0, 1.0]), np.zeros((2, 1)), 0.1)


def test_hold_interpolation_is_a_zero_order_hold():
    """``hold``: each action until the next one's time, as a demonstration recorded at the policy rate sent them."""
    wp = Waypoints(np.array([1.0, 1.1, 1.2]), np.array([[0.0], [1.0], [3.0]]), validity_s=0.05, hold=True)
    assert wp(0.99) is None
    np.testing.assert_allclose(wp(1.0), [0.0])
    np.testing.assert_allclose(wp(1.099), [0.0])
    np.testing.assert_allclose(wp(1.1), [1.0])
    np.testing.assert_allclose(wp(1.19), [1.0])
    np.testing.assert_allclose(wp(1.24), [3.0])
    assert wp(1.26) is None  # the validity window is the same as linear's
    # an angle held across the wrap comes back wrapped
    np.testing.assert_allclose(interpolate(np.array([0.0, 1.0]), np.array([[3.5], [0.0]]), 0.5, angle_dims=[0],
                                           hold=True), [3.5 - 2 * math.pi])
    with pytest.raises(ValueError, match="interpolation"):
        ChunkScheduler(2, 8, 4, 0.1, interpolation="cubic")


# ---- safety ---------------------------------------------------------------------------------------
def test_safety_clips_position_velocity_acceleration_and_rejects_nan():
    f = SafetyFilter(low=[0, 0], high=[10, 10], max_velocity=[100, 100], max_acceleration=[1000, 1000])
    np.testing.assert_allclose(f(np.array([20.0, -5.0]), 0.01), [10, 0])  # first command: position clip only
    assert f.clipped_position == 1
    # from rest, acceleration limit: v <= 1000 * 0.01 = 10 /s -> step 0.1
    np.testing.assert_allclose(f(np.array([0.0, 5.0]), 0.01), [9.9, 0.1])
    for _ in range(200):
        cmd = f(np.array([0.0, 10.0]), 0.01)
    np.testing.assert_allclose(cmd, [0.0, 10.0])
    assert np.all(np.abs(f.velocity) <= 100 + 1e-9)
    prev = f.last.copy()
    for _ in range(20):  # velocity never exceeds its limit per tick
        cmd = f(np.array([10.0, 0.0]), 0.01)
        assert np.all(np.abs(cmd - prev) <= 100 * 0.01 + 1e-9)
        prev = cmd
    assert f.clipped_velocity > 0
    assert f(np.array([np.nan, 1.0]), 0.01) is None and f.rejected == 1
    assert f(np.array([np.inf, 1.0]), 0.01) is None and f.rejected == 2
    np.testing.assert_allclose(f.safe(np.array([-3.0, 4.0])), [0, 4])  # safe action: position-clipped, no ramp
    assert f.safe(np.array([np.nan, 0])) is None


def test_watchdog_and_estop():
    w = Watchdog(0.1)
    assert w.expired(0.0)  # nothing fresh yet
    w.feed(1.0)
    assert not w.expired(1.09) and w.expired(1.11) and w.trips == 1
    w.feed(2.0)
    assert not w.expired(2.05)
    e = EStop()
    e.trigger("x")
    e.trigger("y")
    assert e.active and e.count == 1
    e.clear()
    assert not e.active


# ---- scheduling -----------------------------------------------------------------------------------
def _chunk(t_obs, n=8, to=2, dt=0.1, value=None):
    a = np.arange(n, dtype=np.float64)[:, None] if value is None else np.full((n, 1), float(value))
    return a, t_obs - (to - 1) * dt


def test_scheduler_drops_past_actions_and_never_returns_stale():
    s = ChunkScheduler(2, 8, 4, 0.1, mode="replace")
    a, t_first = _chunk(10.0)  # action i at 9.9 + 0.1 i
    c = s.add_chunk(a, t_first, now=10.25)
    assert s.stats.actions_dropped_past == 4  # 9.9, 10.0, 10.1, 10.2 are past
    assert c.t_valid_from == 10.25
    assert s.target(10.2)[0] is None  # before arrival: never replay the past
    np.testing.assert_allclose(s.target(10.25)[0], [3.5])  # trajectory at now (anchor 10.2 -> 10.3)
    np.testing.assert_allclose(s.target(10.5)[0], [6.0])
    np.testing.assert_allclose(s.target(10.65)[0], [7.0])  # last action (10.6) held within validity 0.1
    assert s.target(10.71)[0] is None
    # a chunk entirely in the past is discarded
    assert s.add_chunk(a, t_first, now=11.0) is None and s.stats.chunks_discarded == 1


def test_one_action_chunk_is_held_for_its_step_after_arrival():
    # T = 1 (an MLP acting every step): the action belongs to [t_obs, t_obs + dt) and arrives after t_obs
    s = ChunkScheduler(1, 1, 1, 0.01, mode="rtc")
    c = s.add_chunk(np.array([[0.3, -0.2]]), 10.0, now=10.002, t_request=10.0005, expected_delay_s=0.001)
    assert c is not None and s.stats.chunks_discarded == 0
    np.testing.assert_allclose(s.target(10.005)[0], [0.3, -0.2])
    np.testing.assert_allclose(s.target(10.01)[0], [0.3, -0.2])
    assert s.target(10.0101)[0] is None  # its hold window is over: never executed later
    assert s.add_chunk(np.array([[0.3, -0.2]]), 10.0, now=10.02) is None and s.stats.chunks_discarded == 1


def test_rtc_frozen_prefix_and_late_chunks():
    s = ChunkScheduler(2, 8, 4, 0.1, mode="rtc")
    s.add_chunk(*_chunk(10.0, value=1.0), now=10.01)
    # request at 10.3 expecting 0.15 s delay: new chunk takes over at the first action >= 10.45 -> 10.5
    new = s.add_chunk(*_chunk(10.3, value=2.0), now=10.36, t_request=10.3, expected_delay_s=0.15)
    assert new.t_switch == pytest.approx(10.5)
    assert s.target(10.4)[0][0] == 1.0  # frozen prefix: the old chunk still executes
    assert s.target(10.49)[0][0] == 1.0
    assert s.target(10.5)[0][0] == 2.0
    assert s.stats.late_chunks == 0
    late = s.add_chunk(*_chunk(10.6, value=3.0), now=10.9, t_request=10.6, expected_delay_s=0.1)
    assert s.stats.late_chunks == 1 and late.t_switch == pytest.approx(10.9)
    assert s.target(10.9)[0][0] == 3.0
    # soft mask: the old chunk's weight decays over rtc_soft_steps
    s2 = ChunkScheduler(2, 8, 4, 0.1, mode="rtc", rtc_soft_steps=2)
    s2.add_chunk(*_chunk(10.0, value=0.0), now=10.0)
    s2.add_chunk(*_chunk(10.3, value=3.0), now=10.35, t_request=10.3, expected_delay_s=0.1)
    v = [s2.target(t)[0][0] for t in (10.39, 10.4, 10.5, 10.6)]
    assert v[0] == 0.0 and 0 < v[1] < v[2] < v[3] and v[3] == pytest.approx(3.0)
    # the frozen prefix only holds while the old chunk is valid: a first chunk starts at once
    s3 = ChunkScheduler(2, 8, 4, 0.1, mode="rtc")
    s3.add_chunk(*_chunk(10.0, value=5.0), now=10.02, t_request=10.0, expected_delay_s=0.3)
    assert s3.target(10.02)[0][0] == 5.0


def test_temporal_ensembling_weights():
    m = 0.5
    s = ChunkScheduler(1, 8, 4, 0.1, mode="ensemble", ensemble_m=m)
    s.add_chunk(*_chunk(10.0, to=1, value=1.0), now=10.0)
    s.add_chunk(*_chunk(10.1, to=1, value=2.0), now=10.1)
    w = np.exp(-m * np.arange(3))  # oldest first
    assert s.target(10.15)[0][0] == pytest.approx((w[:2] @ [1.0, 2.0]) / w[:2].sum())
    s.add_chunk(*_chunk(10.2, to=1, value=4.0), now=10.2)
    assert s.target(10.3)[0][0] == pytest.approx((w @ [1.0, 2.0, 4.0]) / w.sum())


def test_needs_request_threshold():
    s = ChunkScheduler(2, 16, 8, 0.1, mode="rtc", request_lead_s=0.05)
    assert s.needs_request(0.0, 0.02)  # nothing scheduled
    s.add_chunk(*_chunk(10.0, n=16), now=10.01)
    assert not s.needs_request(10.5, 0.1)  # plan ends at 10.8
    assert s.needs_request(10.66, 0.1)


def test_precise_wait_and_recorder():
    import time

    rec = PeriodRecorder(0.002)
    t = time.monotonic()
    for _ in range(50):
        t += 0.002
        rec.tick(precise_wait(t))
    st = rec.stats()
    assert st["n"] == 49 and st["jitter_p50_us"] < 2000


# ---- end to end -------------------------------------------------------------------------------------
def _policy_records(loop):
    return [r for r in loop.commands if r.mode == "policy"]


def _assert_no_stale(loop):
    for r in _policy_records(loop):
        assert r.t_valid_from - 1e-9 <= r.t <= r.t_end + 1e-9, r


@pytest.mark.parametrize("blend", ["rtc", "ensemble", "replace"])
def test_loop_tracks_ramp_policy(tmp_path, blend):
    with PolicyServer(RampPolicy(step=1.0), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        robot = EchoRobot(start=[0.0, 0.0])
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100, blend=blend, watchdog_s=0.3))
        try:
            summary = loop.run(1.5)
        finally:
            loop.close()
    assert summary["chunks"] >= 2 and summary["fatal"] is None
    assert len(_policy_records(loop)) > 100
    _assert_no_stale(loop)
    # the ramp moves 1 unit per 0.1 s: after ~1.4 s of control the robot is well away from 0
    assert robot.position[0] > 5


def test_loop_with_hold_changes_the_command_only_on_the_policy_grid(tmp_path):
    with PolicyServer(RampPolicy(step=1.0), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        robot = EchoRobot(start=[0.0, 0.0])
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100, interpolation="hold", watchdog_s=0.3))
        try:
            summary = loop.run(1.5)
        finally:
            loop.close()
    assert summary["fatal"] is None
    records = _policy_records(loop)
    assert len(records) > 100
    _assert_no_stale(loop)
    assert robot.position[0] > 5  # still follows the ramp
    # linear interpolation changes the command every tick; a hold only when the policy's 0.1 s step turns over
    # (or a new chunk takes over): at 100 Hz most ticks repeat the previous command
    changes = sum(not np.array_equal(a.command, b.command) for a, b in zip(records, records[1:]))
    assert changes <= 1.5 / 0.1 + summary["chunks"] + 2, changes
    with pytest.raises(ValueError, match="interpolation"):
        ControlLoop(robot, srv.endpoint, ControlLoopConfig(interpolation="spline"))


def test_loop_estop_latches(tmp_path):
    private = tmp_path / "operator"
    private.mkdir(mode=0o700)
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0,
                      operator_address=f"ipc://{private}/op.ipc") as srv:
        robot = EchoRobot()
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(watchdog_s=0.3))

        def on_tick(lp, rec):
            if lp.counters["ticks"] == 50:
                lp.trigger_estop("test")

        loop.run(1.0, on_tick=on_tick)
        assert srv.estopped  # the server latched too
        after = loop.commands[50:]
        assert all(r.mode != "policy" for r in after) and loop.estop.active
        c = PolicyClient(srv.endpoint)
        m = c.call("infer", {"observation.state": np.zeros((2, 2), np.float32)}, t_obs=0.0)
        assert m.type == "error" and m.get("kind") == "estopped"
        refused = c.call("clear_estop")  # a client is not an operator
        assert refused.type == "error" and refused.get("kind") == "forbidden" and srv.estopped
        assert send_operator_command(srv.operator_endpoint, "clear_estop")["estopped"] is False
        assert c.call("infer", {"observation.state": np.zeros((2, 2), np.float32)}, t_obs=0.0).type == "chunk"
        c.close()
        loop.close()


def test_nan_observations_hold_safe_action(tmp_path):
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        robot = EchoRobot()
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(watchdog_s=0.3))

        def on_tick(lp, rec):
            if lp.counters["ticks"] == 60:
                robot.nan_observations = True

        loop.run(1.2, on_tick=on_tick)
        loop.close()
        assert loop.counters["rejected_observations"] >= 1
        assert srv.stats.snapshot()["errors"].get("nonfinite", 0) == 0  # never sent
    late = [r for r in loop.commands[75:]]
    assert late and all(r.mode != "policy" and r.reason == "observation" for r in late)


class _OneBufferRobot(EchoRobot):
    """A driver that reads every observation into the same array (as many hardware SDKs do)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.buffer = np.zeros(2, np.float32)

    def read_state(self):
        state = super().read_state()
        if state is not None:
            self.buffer[:] = state.observation[self.state_key]
            state.observation[self.state_key] = self.buffer
        return state


def test_observation_history_survives_a_driver_that_reuses_its_buffer(tmp_path):
    """The To frames sent to the policy are the observations as read, not views of the driver's buffer."""
    with PolicyServer(RampPolicy(step=1.0), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        robot = _OneBufferRobot(start=[0.0, 0.0])
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100, watchdog_s=0.3))
        try:
            loop.run(0.6)
        finally:
            loop.close()
    frames = [s.observation["observation.state"] for s in loop.history]
    assert len(frames) >= 2
    assert not any(np.shares_memory(f, robot.buffer) for f in frames)
    assert not np.array_equal(frames[-2], frames[-1])  # the robot moved between the two reads


@pytest.mark.parametrize("robot_hz,times,expected", [
    (50.0, np.arange(12) * 0.02, [0.02, 0.12, 0.22]),  # 5 robot frames per policy step: every fifth
    (10.0, np.arange(5) * 0.1, [0.2, 0.3, 0.4]),  # the same rate: the last To frames
    (10.0, np.array([0.0, 0.1, 0.3, 0.4]), [0.1, 0.3, 0.4]),  # a dropped frame: the latest one before
    (50.0, np.array([0.0, 0.02]), [0.0, 0.0, 0.02]),  # episode start: the oldest repeated
])
def test_history_is_sampled_at_the_policy_rate(tmp_path, robot_hz, times, expected):
    """The To observations sent are 1 / fps apart, whatever the robot's own rate."""
    from robopolicy.deploy.protocol import PolicySpec
    from robopolicy.robots.base import RobotState

    robot = EchoRobot(hz=robot_hz)
    loop = ControlLoop(robot, f"ipc://{tmp_path}/none.ipc", ControlLoopConfig(control_hz=robot_hz))
    try:
        loop._configure(PolicySpec({"observation.state": (2,)}, "action", 2, n_obs_steps=3, horizon=8,
                                   n_action_steps=4, fps=10.0))
        for i, t in enumerate(times):
            loop.history.append(RobotState({"observation.state": np.full(2, t, np.float32)}, float(t), i))
        np.testing.assert_allclose([s.t for s in loop.history_frames()], expected, atol=1e-9)
    finally:
        loop.close()


def _tiny_mlp():
    from robopolicy.data.normalize import Normalizer
    from robopolicy.policies.base import FeatureSpec
    from robopolicy.policies.mlp.configuration import MLPConfig
    from robopolicy.policies.mlp.modeling import MLPPolicy

    cfg = MLPConfig(n_obs_steps=2, horizon=8, n_action_steps=4, hidden_dims=[16],
                    input_features=[FeatureSpec("observation.state", (2,))], output_features=[FeatureSpec("action", (2,))],
                    normalization={"observation.state": "min_max", "action": "min_max"})
    stats = {k: {"min": [0.0, 0.0], "max": [512.0, 512.0]} for k in ("observation.state", "action")}
    torch.manual_seed(0)
    return MLPPolicy(cfg, Normalizer(stats, cfg.normalization)).eval()


def test_torch_policy_through_server_matches_direct(tmp_path):
    policy = _tiny_mlp()
    policy.save(tmp_path / "ckpt")
    adapter = load_policy_adapter(tmp_path / "ckpt", fps=10, load_checkpoint=load_policy)
    assert adapter.spec.n_obs_steps == 2 and adapter.spec.horizon == 8 and adapter.spec.action_dim == 2
    obs = np.array([[100.0, 200.0], [110.0, 190.0]], np.float32)
    direct = policy.predict_chunk({"observation.state": torch.from_numpy(obs)[None]})[0].numpy()
    with PolicyServer(adapter_from_policy(policy), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        with PolicyClient(srv.endpoint) as c:
            assert c.hello().horizon == 8
            m = c.call("infer", {"observation.state": obs}, t_obs=50.0)
    assert m.type == "chunk" and m.get("t_first") == pytest.approx(49.9) and m.get("dt") == pytest.approx(0.1)
    np.testing.assert_allclose(m.arrays["action"], direct, rtol=1e-5, atol=1e-4)


def test_sim_pusht_robot_closed_loop_smoke(tmp_path):
    """The PushT sim in its own process, driven through server + control loop for ~2 s."""
    from robopolicy.robots.sim_pusht import SimPushTRobot

    spec = ramp_spec(n_obs_steps=2, horizon=16, n_action_steps=8)
    with PolicyServer(RampPolicy(spec, step=5.0), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        robot = SimPushTRobot(seed=3, max_runtime_s=60)
        robot.connect()
        try:
            start = robot.read_state()
            loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100, watchdog_s=0.3))
            summary = loop.run(2.0)
            loop.close()
            end = robot.read_state()
        finally:
            robot.disconnect()
    assert summary["chunks"] >= 2 and summary["fatal"] is None
    assert end.seq >= start.seq + 15  # ~10 Hz physics in real time
    assert math.isfinite(end.info["coverage"])
    moved = np.linalg.norm(end.observation["observation.state"] - start.observation["observation.state"])
    assert moved > 5.0  # the agent followed the ramp
    _assert_no_stale(loop)
