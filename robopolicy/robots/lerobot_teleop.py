"""LeRobot teleoperators (a leader arm, keyboard, gamepad, plugins) recording into a LeRobot v3.0 dataset.

Leader-follower recording as LeRobot does it: every frame, the teleoperator's action (for a leader arm,
its joint positions in the follower's units) is sent to the follower, and the frame stores the follower's
observation with the action that was commanded (position-clipped to the follower's calibrated limits,
as the follower's safety filter sends it). Episodes go through robopolicy's
:class:`~robopolicy.data.recorder.DatasetRecorder`: each finished episode is durable, ``kill -9`` loses
at most the one in progress, and recording into an existing dataset appends to it.

The loop keeps the requested rate and says so when it cannot (the achieved rate is in the summary and a
warning is logged for every episode that ran more than 10 % slow).

Keyboards and gamepads move the gripper, not the joints: :class:`EndEffectorTeleop` turns their end-effector
deltas into joint targets with LeRobot's own processor steps (the chain ``lerobot``'s gym_manipulator builds:
``MapDeltaActionToRobotActionStep`` -> ``EEReferenceAndDelta`` -> ``EEBoundsAndSafety`` -> ``GripperVelocityToJoint``
-> ``InverseKinematicsEEToJoints``), with inverse kinematics from the arm's MuJoCo model
(:mod:`robopolicy.robots.arm_kinematics`) or, given a URDF, LeRobot's placo ``RobotKinematics``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robopolicy.robots.lerobot_robot import (
    ACTION_KEY,
    LeRobotRobot,
    NotCalibrated,
    import_lerobot,
    make_lerobot_config,
)

log = logging.getLogger("robopolicy.robots.lerobot_teleop")


class TeleopUnavailable(ConnectionError):
    """The input device is not there (no display for the keyboard, no gamepad): retrying will not help."""


class LeRobotTeleoperator:
    """Any LeRobot teleoperator by its config ``type`` and fields (``so101_leader``, ``keyboard``, plugins)."""

    def __init__(self, type: str, **fields: Any):
        import_lerobot()
        from lerobot.teleoperators import make_teleoperator_from_config

        self.type = type
        self.config = make_lerobot_config("teleop", type, **fields)
        self.device = make_teleoperator_from_config(self.config)

    def connect(self, calibrate: bool = False, retries: int = 2) -> None:
        for attempt in range(1 + retries):
            try:
                self._connect(calibrate)
                return
            except (NotCalibrated, TeleopUnavailable):
                raise
            except (ConnectionError, RuntimeError) as e:  # a status packet lost in the handshake/configuration
                if self.device.is_connected:
                    self.device.disconnect()
                if attempt == retries:
                    raise
                log.warning("%s: connecting failed (%s); retrying", self.type, e)

    def _connect(self, calibrate: bool) -> None:
        d = self.device
        if "calibrate" in inspect.signature(d.connect).parameters:
            d.connect(calibrate=calibrate)
        else:  # keyboards and gamepads: nothing to calibrate
            d.connect()
        if not d.is_connected:  # LeRobot's keyboard stays silent about a missing pynput or display
            why = ("LeRobot skips pynput on Linux without a display: set DISPLAY (an X session, or Xvfb for a "
                   "remote machine)" if self.type.startswith("keyboard") else "see LeRobot's log above")
            raise TeleopUnavailable(f"teleoperator {self.type!r} did not connect: {why}")
        if self.type == "gamepad" and getattr(d.gamepad, "joystick", None) is None:
            d.disconnect()
            raise TeleopUnavailable("teleoperator 'gamepad': pygame sees no gamepad; plug one in (or check "
                                  "`python -c \"import pygame; pygame.init(); print(pygame.joystick.get_count())\"`)")
        if getattr(d, "bus", None) is None:
            return
        if not d.is_calibrated and not calibrate:
            if not d.calibration:
                d.disconnect()
                raise NotCalibrated(f"{self.type} {self.config.id!r} has no calibration file at {d.calibration_fpath}: "
                                   f"run `lerobot-calibrate --teleop.type={self.type} --teleop.port=<port> "
                                   f"--teleop.id={self.config.id}`")
            bus = getattr(d, "bus", None)
            if bus is not None:
                bus.write_calibration(d.calibration)

    def get_action(self) -> dict[str, float]:
        return self.device.get_action()

    def disconnect(self) -> None:
        if self.device.is_connected:
            self.device.disconnect()

    def __enter__(self) -> LeRobotTeleoperator:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()


# robopolicy's keys for LeRobot's ``keyboard`` teleoperator (which reports the characters held) on an arm: the
# gripper moves forward/back (w/s, x: away from the base), left/right (a/d, y), up/down (r/f, z); o opens, c closes.
KEYBOARD_EE_KEYS = {"w": ("delta_x", 1.0), "s": ("delta_x", -1.0), "a": ("delta_y", 1.0), "d": ("delta_y", -1.0),
                    "r": ("delta_z", 1.0), "f": ("delta_z", -1.0)}
GRIPPER_CLOSE, GRIPPER_STAY, GRIPPER_OPEN = 0.0, 1.0, 2.0  # LeRobot's discrete gripper command (gamepad, keyboard_ee)
KEYBOARD_GRIPPER_KEYS = {"o": GRIPPER_OPEN, "c": GRIPPER_CLOSE}
EE_DELTA_NAMES = ("delta_x", "delta_y", "delta_z")
END_EFFECTOR_TELEOPS = ("keyboard", "keyboard_ee", "gamepad")  # LeRobot teleoperators that move the gripper
# LeRobot 0.4.4's keyboard_ee reads arrows, shift and ctrl, but its _on_press keeps only keys with a ``char``,
# which pynput's special keys do not have: those presses never reach get_action (tests/test_lerobot_ee_teleop.py).
KEYBOARD_EE_BROKEN = ("LeRobot 0.4.4's keyboard_ee teleoperator drops arrow, shift and ctrl presses (pynput hands "
                      "them over without a .char, which its _on_press skips), so the arm would never move; use "
                      "teleop.type=keyboard: w/s, a/d, r/f move the gripper forward/back, left/right, up/down; "
                      "o opens, c closes")


def keyboard_to_ee_delta(pressed: dict[str, Any]) -> dict[str, float]:
    """LeRobot ``keyboard`` action (the characters held) -> end-effector deltas and a discrete gripper command."""
    held = {str(k).lower() for k in pressed}
    action = dict.fromkeys(EE_DELTA_NAMES, 0.0)
    for key, (axis, sign) in KEYBOARD_EE_KEYS.items():
        if key in held:
            action[axis] += sign
    commands = {KEYBOARD_GRIPPER_KEYS[k] for k in held if k in KEYBOARD_GRIPPER_KEYS}
    action["gripper"] = commands.pop() if len(commands) == 1 else GRIPPER_STAY  # both held: stay
    return action


@dataclasses.dataclass
class EndEffectorLimits:
    """How fast and where a keyboard or gamepad may move the gripper (metres, the arm model's base frame)."""

    speed: float = 0.1  # m/s with a key held or a stick at full travel
    gripper_speed: float = 100.0  # gripper units/s (0..100 on SO arms): full travel in a second
    bounds_min: tuple[float, float, float] = (0.05, -0.35, 0.0)
    bounds_max: tuple[float, float, float] = (0.45, 0.35, 0.40)
    max_step_m: float = 0.05  # a bigger jump of the target between frames stops the recording (LeRobot's check)
    gripper_max: float = 100.0


class EndEffectorTeleop:
    """A keyboard or gamepad that moves the arm's gripper: each frame, its end-effector deltas become joint targets.

    LeRobot's processor steps do the work (the chain its gym_manipulator builds for the same teleoperators): the
    delta is scaled to ``speed / fps`` and added to the last commanded gripper pose (forward kinematics of the
    previous inverse-kinematics solution; at an episode's start, of the joints just read), clipped to the workspace
    box, and solved back to joints by inverse kinematics; the gripper command opens or closes at
    ``gripper_speed``. With nothing pressed the target holds the last commanded pose, so an arm that sags under
    gravity is pulled back instead of drifting.

    ``kinematics``: anything with LeRobot's ``RobotKinematics`` interface, in the robot's units (degrees):
    :class:`~robopolicy.robots.arm_kinematics.MujocoKinematics` or LeRobot's placo ``RobotKinematics``.
    """

    def __init__(self, teleop: Any, kinematics: Any, motor_names: list[str], fps: float, teleop_type: str = "",
                 limits: EndEffectorLimits | None = None):
        import_lerobot()
        from lerobot.processor import MapDeltaActionToRobotActionStep, RobotProcessorPipeline, TransitionKey
        from lerobot.processor.converters import create_transition, identity_transition
        from lerobot.robots.so_follower.robot_kinematic_processor import (
            EEBoundsAndSafety,
            EEReferenceAndDelta,
            GripperVelocityToJoint,
            InverseKinematicsRLStep,
        )

        if teleop_type == "keyboard_ee":
            raise ValueError(KEYBOARD_EE_BROKEN)
        if "gripper" not in motor_names or motor_names[-1] != "gripper":
            raise ValueError(f"end-effector teleoperation needs the gripper as the robot's last motor (LeRobot's "
                             f"processor steps assume it); the robot's motors are {motor_names}")
        self.teleop, self.kinematics, self.teleop_type = teleop, kinematics, teleop_type
        self.motor_names = list(motor_names)
        self.limits = limits = limits or EndEffectorLimits()
        step = limits.speed / fps
        # The delta moves the last commanded pose (the previous IK solution, carried in the transition's
        # complementary data as gym_manipulator carries it), not the measured one: a measured reference would
        # slow the gripper to whatever the servos' tracking lag allows.
        self.pipeline = RobotProcessorPipeline[dict, dict](
            steps=[
                MapDeltaActionToRobotActionStep(),
                EEReferenceAndDelta(kinematics=kinematics, end_effector_step_sizes={"x": step, "y": step, "z": step},
                                    motor_names=self.motor_names, use_latched_reference=False, use_ik_solution=True),
                EEBoundsAndSafety(end_effector_bounds={"min": list(limits.bounds_min), "max": list(limits.bounds_max)},
                                  max_ee_step_m=limits.max_step_m),
                GripperVelocityToJoint(clip_max=limits.gripper_max, discrete_gripper=True,
                                       speed_factor=limits.gripper_speed / (fps * limits.gripper_max)),
                InverseKinematicsRLStep(kinematics=kinematics, motor_names=self.motor_names,
                                        initial_guess_current_joints=False),
            ],
            to_transition=identity_transition,
            to_output=identity_transition,
        )
        self._create_transition, self._keys = create_transition, TransitionKey
        self._ik_solution: np.ndarray | None = None

    def end_effector_delta(self) -> dict[str, float]:
        raw = self.teleop.get_action()
        if self.teleop_type == "keyboard":
            return keyboard_to_ee_delta(raw)
        missing = [k for k in EE_DELTA_NAMES if k not in raw]
        if missing:
            raise ValueError(f"teleoperator {self.teleop_type!r} gave {sorted(raw)}, not end-effector deltas "
                             f"{list(EE_DELTA_NAMES)} (+ gripper)")
        action = {k: float(raw[k]) for k in EE_DELTA_NAMES}
        action["gripper"] = float(raw.get("gripper", GRIPPER_STAY))
        return action

    def __call__(self, observation: dict[str, float]) -> dict[str, float]:
        """The robot's joint positions ({"shoulder_pan.pos": deg, ...}) -> joint targets for its motors."""
        obs = {f"{m}.pos": float(observation[f"{m}.pos"]) for m in self.motor_names}  # motor order, as the steps read
        carried = {} if self._ik_solution is None else {"IK_solution": self._ik_solution}
        out = self.pipeline(self._create_transition(observation=obs, action=self.end_effector_delta(),
                                                    complementary_data=carried))
        self._ik_solution = out[self._keys.COMPLEMENTARY_DATA]["IK_solution"]
        action = out[self._keys.ACTION]
        return {f"{m}.pos": float(action[f"{m}.pos"]) for m in self.motor_names}

    def reset(self) -> None:
        """A new episode: hold where the arm is now, not where the last episode left the target."""
        self.pipeline.reset()
        self._ik_solution = None


def make_end_effector_teleop(teleop: LeRobotTeleoperator, robot: LeRobotRobot, fps: float, model: str | None = None,
                             frame: str | None = None, limits: EndEffectorLimits | None = None) -> EndEffectorTeleop:
    """Kinematics for ``robot`` from ``model`` (an MJCF, or a URDF through LeRobot's placo ``RobotKinematics``), or
    the SO-101's MuJoCo model for SO-100/101 followers; the robot must report degrees (``use_degrees``)."""
    motors = [n.removesuffix(".pos") for n in robot.action_names]
    if getattr(robot.config, "use_degrees", True) is False:
        raise ValueError(f"{robot.type} reports its joints in -100..100, but inverse kinematics needs degrees: set "
                         "arm.use_degrees=true (and record, train and deploy with it)")
    arm_joints = motors[:-1]
    if model is None:
        if not robot.type.startswith(("so100", "so101", "so_")):
            raise ValueError(f"no arm model for {robot.type!r}: give ee.model=<the arm's MJCF or URDF> and ee.frame="
                             "<its end-effector site or link>")
        from robopolicy.robots.arm_kinematics import so101_kinematics

        kinematics = so101_kinematics(arm_joints)
    elif str(model).endswith(".urdf"):
        from lerobot.model.kinematics import RobotKinematics  # placo; LeRobot's own IK

        kinematics = RobotKinematics(str(model), target_frame_name=frame or "gripper_frame_link", joint_names=arm_joints)
    else:
        from robopolicy.robots.arm_kinematics import MujocoKinematics

        if not frame:
            raise ValueError(f"ee.model={model}: give ee.frame=<the MJCF site at the end effector>")
        kinematics = MujocoKinematics(model, frame, arm_joints)
    return EndEffectorTeleop(teleop, kinematics, motors, fps, teleop_type=teleop.type, limits=limits)


@dataclasses.dataclass
class RecordSummary:
    saved: list[int] = dataclasses.field(default_factory=list)
    frames: int = 0
    achieved_fps: list[float] = dataclasses.field(default_factory=list)
    slow_episodes: int = 0
    discarded: int = 0  # episodes ``accept`` turned down (not written)


def record_leader_follower(robot: LeRobotRobot, teleop: LeRobotTeleoperator, recorder, fps: float,
                           num_episodes: int, episode_s: float, task: str,
                           between_episodes: Callable[[int], None] | None = None,
                           stop: threading.Event | None = None,
                           extra_observation: Callable[[], dict[str, np.ndarray]] | None = None,
                           accept: Callable[[int], bool] | None = None,
                           to_joints: EndEffectorTeleop | None = None) -> RecordSummary:
    """Record ``num_episodes`` episodes of ``episode_s`` seconds at ``fps`` (robot and teleop connected).

    ``teleop`` is anything with ``get_action() -> {action name: value}`` (a LeRobot teleoperator, a
    :class:`ScriptedTeleop`); ``extra_observation`` adds features the robot cannot sense (a simulated
    scene's object poses) to every frame; the recorder must declare them. ``accept(e)``, asked after each
    episode, can turn it down (a failed attempt): it is then discarded instead of written. ``to_joints`` (a
    keyboard or gamepad) turns the teleoperator's end-effector deltas into joint targets from the frame's joints.
    """
    names = robot.action_names
    summary = RecordSummary()
    period = 1.0 / fps
    for e in range(num_episodes):
        if between_episodes is not None:
            between_episodes(e)
        if to_joints is not None:
            to_joints.reset()
        n_frames = max(1, round(episode_s * fps))
        t_start = time.monotonic()
        next_t = t_start
        for _ in range(n_frames):
            if stop is not None and stop.is_set():
                recorder.discard_episode()
                return summary
            state = robot.read_state()  # observe, then act: LeRobot's record loop order (and the policy's)
            raw = teleop.get_action() if to_joints is None else to_joints(state.info["raw"])
            missing = [k for k in names if k not in raw]
            if missing:  # e.g. a keyboard/gamepad teleoperator (end-effector deltas) on a joint-space arm
                recorder.discard_episode()
                raise ValueError(f"the teleoperator's action has {sorted(raw)}, but the robot needs {names} "
                                 f"(missing {missing}): pair it with a robot type that takes its actions")
            action = np.array([float(raw[k]) for k in names], dtype=np.float64)
            action = robot.filter.clip_position(action)
            robot.send_command(action)
            frame = {k: v for k, v in state.observation.items()}
            if extra_observation is not None:
                frame.update(extra_observation())
            frame[ACTION_KEY] = action.astype(np.float32)
            frame["task"] = task
            recorder.add_frame(frame)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - t_start
        achieved = n_frames / elapsed if elapsed > 0 else float("inf")
        summary.achieved_fps.append(achieved)
        if achieved < 0.9 * fps:
            summary.slow_episodes += 1
            log.warning("episode %d ran at %.1f fps instead of %.1f: the dataset's timestamps say %.1f fps",
                        e, achieved, fps, fps)
        if accept is not None and not accept(e):
            recorder.discard_episode()
            summary.discarded += 1
            continue
        summary.saved.append(recorder.save_episode(task=task))
        summary.frames += n_frames
    return summary


class ScriptedTeleop:
    """A teleoperator that plays ``actions(step) -> vector`` (a scripted expert) in the robot's action names."""

    def __init__(self, names: list[str], actions: Callable[[int], np.ndarray]):
        self.names, self.actions, self.step = list(names), actions, 0

    def reset(self) -> None:
        self.step = 0

    def get_action(self) -> dict[str, float]:
        a = np.asarray(self.actions(self.step), dtype=np.float64)
        self.step += 1
        return {k: float(v) for k, v in zip(self.names, a)}


class ScriptedLeaderOperator:
    """Moves a simulated leader arm's joints along ``trajectory(t) -> joint angles`` (a scripted human)."""

    def __init__(self, bus, trajectory: Callable[[float], np.ndarray], hz: float = 100.0):
        self.bus, self.trajectory, self.hz = bus, trajectory, hz
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def start(self) -> ScriptedLeaderOperator:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="scripted-leader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bus.set_joint_positions(self.trajectory(time.monotonic() - self.t0))
            self._stop.wait(1.0 / self.hz)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


__all__ = ["END_EFFECTOR_TELEOPS", "EndEffectorLimits", "EndEffectorTeleop", "KEYBOARD_EE_KEYS", "LeRobotTeleoperator", "RecordSummary",
           "TeleopUnavailable", "keyboard_to_ee_delta", "make_end_effector_teleop", "ScriptedLeaderOperator", "ScriptedTeleop", "record_leader_follower"]
