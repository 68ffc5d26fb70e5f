"""Arms behind the :class:`~robopolicy.robots.base.Robot` interface, through the arm bridge message set.

- :class:`BridgeArm` is the robot-side client of any arm bridge (``robopolicy.deploy.arm_bridge``):
  a real arm's controller process, or the reference bridge below. Its action is the robosuite
  convention the demonstrations use: 7 numbers, [dx, dy, dz] x ``pos_scale`` metres, [rx, ry, rz]
  x ``rot_scale`` radians (axis-angle, base frame), gripper (-1 open, +1 closed). The safe action is
  "hold": zero motion, gripper unchanged.
- :class:`RobosuiteArmBackend` drives a simulated robosuite arm for the reference bridge, publishing the
  same ``observation.state`` / ``observation.environment_state`` the sim env and its datasets use.
- :class:`SimArm` starts that bridge in its own process (``robosuite`` or the dependency-free
  ``kinematic`` backend) and is a :class:`BridgeArm` connected to it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from robopolicy.deploy.arm_bridge import ArmBackend, ArmBridge, ArmClient, ArmReading, ArmSpec, KinematicArm
from robopolicy.robots.base import Robot, RobotSpec, RobotState
from robopolicy.teleop.base import TeleopCommand, pose_delta

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
POS_SCALE, ROT_SCALE = 0.05, 0.5


def arm_spec(rate_hz: float = 20.0, name: str = "sim_arm", safe_action: str | np.ndarray = "hold") -> RobotSpec:
    return RobotSpec(name=name, action_dim=7, action_low=-np.ones(7), action_high=np.ones(7), control_hz=rate_hz,
                     safe_action=safe_action, observation_keys=(STATE_KEY, ENV_STATE_KEY))


class RobosuiteArmBackend(ArmBackend):
    """A robosuite env as the arm of the reference bridge (one env step per bridge tick)."""

    def __init__(self, task: str = "Lift", seed: int = 0, rate_hz: float = 20.0, **env_kwargs: Any):
        from robopolicy.sim.robosuite_env import RobosuiteArmEnv

        self.env = RobosuiteArmEnv(task=task, control_freq=int(rate_hz), horizon=10**9, **env_kwargs)
        self.env.reset(seed=seed)
        joint_pos, _ = self.env.joint_state()
        lo = np.array([-0.5, -0.6, 0.8])  # around the table; a real bridge sets its own box
        self.spec = ArmSpec(dof=len(joint_pos), rate_hz=rate_hz, modes=("ee_delta", "ee_pose"),
                            workspace_low=tuple(lo), workspace_high=(0.5, 0.6, 1.4), max_step_pos=POS_SCALE,
                            max_step_rot=ROT_SCALE, name=f"robosuite-{task}")

    def read(self) -> ArmReading:
        pose = self.env.ee_pose()
        q, dq = self.env.joint_state()
        obs = self.env.last_obs
        return ArmReading(q, dq, pose.pos, pose.quat, pose.gripper,
                          extra={STATE_KEY: obs[STATE_KEY], ENV_STATE_KEY: obs[ENV_STATE_KEY],
                                 "is_success": np.array([float(self.env._env._check_success())]),
                                 "episode_step": np.array([float(self.env.episode_step)])})

    def reset(self, seed: int) -> None:
        self.env.reset(seed=seed)

    def step(self, mode: str, target: np.ndarray, gripper: float) -> None:
        if mode == "ee_pose":
            dp, dr = pose_delta(self.env.ee_pose(), target[:3], target[3:7], POS_SCALE, ROT_SCALE)
        else:
            dp, dr = target[:3], target[3:6]
        self.env.step(self.env.teleop_action(TeleopCommand(dp, dr, gripper)))

    def close(self) -> None:
        self.env.close()


def run_bridge(backend: str, state_addr: str, cmd_addr: str, ctl_addr: str, max_runtime_s: float = 3600.0,
               rate_hz: float = 20.0, backend_kwargs: dict | None = None, operator_addr: str | None = None) -> None:
    """Process entry point of the reference bridge."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if backend == "robosuite":
        arm: ArmBackend = RobosuiteArmBackend(rate_hz=rate_hz, **(backend_kwargs or {}))
    elif backend == "kinematic":
        arm = KinematicArm(ArmSpec(dof=0, rate_hz=rate_hz, **(backend_kwargs or {})))
    else:
        raise ValueError(f"unknown bridge backend {backend!r} (robosuite, kinematic)")
    bridge = ArmBridge(arm, state_addr, cmd_addr, ctl_addr, operator_addr=operator_addr)
    parent = os.getppid()
    try:
        t_end = time.monotonic() + max_runtime_s
        while time.monotonic() < t_end and os.getppid() == parent:  # stop when the parent dies
            bridge.run(max_runtime_s=1.0)
    finally:
        bridge.close()


class BridgeArm(Robot):
    """A :class:`Robot` talking to an arm bridge at three ZeroMQ addresses (state, command, control)."""

    def __init__(self, state_addr: str, cmd_addr: str, ctl_addr: str, rate_hz: float = 20.0,
                 safe_action: str | np.ndarray = "hold", connect_timeout_s: float = 30.0,
                 operator_addr: str | None = None):
        """``operator_addr``: the bridge's operator socket, needed for :meth:`reset` and :meth:`clear_estop`."""
        self.addrs = (state_addr, cmd_addr, ctl_addr)
        self.operator_addr = operator_addr
        self.spec = arm_spec(rate_hz, safe_action=safe_action)
        self.connect_timeout_s = connect_timeout_s
        self.client: ArmClient | None = None
        self.arm_spec: dict[str, Any] | None = None
        self._gripper = -1.0

    def connect(self) -> None:
        self.client = ArmClient(*self.addrs, timeout_s=self.connect_timeout_s, operator_addr=self.operator_addr)
        self.arm_spec = self.client.hello()
        deadline = time.monotonic() + self.connect_timeout_s
        while self.client.poll_state(0.1) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no arm state from {self.addrs[0]} within {self.connect_timeout_s} s")

    def read_state(self) -> RobotState | None:
        msg = self.client.poll_state() if self.client else None
        if msg is None:
            return None
        a = msg.arrays
        obs = {k: v.astype(np.float32) for k, v in a.items() if k.startswith("observation.")}
        if STATE_KEY not in obs:
            obs[STATE_KEY] = np.concatenate([a["ee_pos"], a["ee_quat"], a["gripper"]]).astype(np.float32)
        self._gripper = float(a["gripper"][0])
        info = {"estopped": bool(msg.get("estopped")), "cmd_seq": msg.get("cmd_seq"), "episode": msg.get("episode", 0)}
        if "is_success" in a:
            info["is_success"] = bool(a["is_success"][0] > 0.5)
        if "episode_step" in a:  # simulated arms: env steps since the last reset
            info["steps"] = int(a["episode_step"][0])
        return RobotState(obs, float(msg.get("t", msg.get("t_send"))), int(msg.seq), info)

    def send_command(self, action: np.ndarray) -> None:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(7), -1.0, 1.0)
        target = np.concatenate([a[:3] * POS_SCALE, a[3:6] * ROT_SCALE])
        self.client.send("ee_delta", target, 1.0 if a[6] > 0 else -1.0)

    def stop(self) -> None:
        if self.client is not None:
            self.client.send("ee_delta", np.zeros(6), self._gripper)

    def estop(self) -> None:
        self.client.estop()

    def clear_estop(self) -> None:
        self.client.clear_estop()

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        return np.array([0, 0, 0, 0, 0, 0, self._gripper], dtype=np.float64)

    def reset(self, seed: int, timeout_s: float = 10.0) -> RobotState:
        """Start a new episode on a simulated arm (seeded object poses); returns its first state."""
        episode = self.client.reset(seed)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.read_state() if self.client.poll_state(0.05) is not None else None
            if state is not None and (state.info.get("episode") or 0) >= episode:
                return state
        raise TimeoutError(f"arm bridge sent no state of episode {episode} within {timeout_s} s")

    def disconnect(self) -> None:
        if self.client is not None:
            self.stop()
            self.client.close()
            self.client = None


class SimArm(BridgeArm):
    """The reference bridge in a child process plus a :class:`BridgeArm` connected to it over ipc."""

    def __init__(self, backend: str = "robosuite", rate_hz: float = 20.0, max_runtime_s: float = 3600.0,
                 backend_kwargs: dict | None = None, **kw: Any):
        # The bridge is this process's own simulator, so this process is its operator (episode resets): all its
        # sockets live in a fresh 0700 directory that other local users cannot enter.
        self._private = tempfile.mkdtemp(prefix="robopolicy-arm-")
        addrs = tuple(f"ipc://{self._private}/{n}" for n in ("state", "cmd", "ctl"))
        super().__init__(*addrs, rate_hz=rate_hz, operator_addr=f"ipc://{self._private}/operator", **kw)
        self.backend, self.max_runtime_s, self.backend_kwargs = backend, max_runtime_s, backend_kwargs or {}
        self.process: mp.process.BaseProcess | None = None

    def connect(self) -> None:
        os.makedirs(self._private, mode=0o700, exist_ok=True)  # again after a disconnect
        ctx = mp.get_context("spawn")
        self.process = ctx.Process(target=run_bridge, args=(self.backend, *self.addrs),
                                   kwargs={"max_runtime_s": self.max_runtime_s, "rate_hz": self.spec.control_hz,
                                           "backend_kwargs": self.backend_kwargs,
                                           "operator_addr": self.operator_addr}, daemon=True)
        self.process.start()
        super().connect()

    def disconnect(self) -> None:
        super().disconnect()
        if self.process is not None:
            self.process.terminate()
            self.process.join(10)
            self.process = None
        shutil.rmtree(self._private, ignore_errors=True)


__all__ = ["BridgeArm", "RobosuiteArmBackend", "SimArm", "arm_spec", "run_bridge"]
