"""LeRobot teleoperators (a leader arm, keyboard, gamepad, plugins) recording into a LeRobot v3.0 dataset.

Leader-follower recording as LeRobot does it: every frame, the teleoperator's action (for a leader arm,
its joint positions in the follower's units) is sent to the follower, and the frame stores the follower's
observation with the action that was commanded (position-clipped to the follower's calibrated limits,
as the follower's safety filter sends it). Episodes go through robopolicy's
:class:`~robopolicy.data.recorder.DatasetRecorder`: each finished episode is durable, ``kill -9`` loses
at most the one in progress, and recording into an existing dataset appends to it.

The loop keeps the requested rate and says so when it cannot (the achieved rate is in the summary and a
warning is logged for every episode that ran more than 10 % slow).
"""

from __future__ import annotations

import dataclasses
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
            except NotCalibrated:
                raise
            except (ConnectionError, RuntimeError) as e:  # a status packet lost in the handshake/configuration
                if self.device.is_connected:
                    self.device.disconnect()
                if attempt == retries:
                    raise
                log.warning("%s: connecting failed (%s); retrying", self.type, e)

    def _connect(self, calibrate: bool) -> None:
        d = self.device
        d.connect(calibrate=calibrate)
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
                           accept: Callable[[int], bool] | None = None) -> RecordSummary:
    """Record ``num_episodes`` episodes of ``episode_s`` seconds at ``fps`` (robot and teleop connected).

    ``teleop`` is anything with ``get_action() -> {action name: value}`` (a LeRobot teleoperator, a
    :class:`ScriptedTeleop`); ``extra_observation`` adds features the robot cannot sense (a simulated
    scene's object poses) to every frame; the recorder must declare them. ``accept(e)``, asked after each
    episode, can turn it down (a failed attempt): it is then discarded instead of written.
    """
    names = robot.action_names
    summary = RecordSummary()
    period = 1.0 / fps
    for e in range(num_episodes):
        if between_episodes is not None:
            between_episodes(e)
        n_frames = max(1, round(episode_s * fps))
        t_start = time.monotonic()
        next_t = t_start
        for _ in range(n_frames):
            if stop is not None and stop.is_set():
                recorder.discard_episode()
                return summary
            state = robot.read_state()  # observe, then act: LeRobot's record loop order (and the policy's)
            raw = teleop.get_action()
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


__all__ = ["LeRobotTeleoperator", "RecordSummary", "ScriptedLeaderOperator", "ScriptedTeleop", "record_leader_follower"]
