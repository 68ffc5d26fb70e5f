"""Import robomimic HDF5 demonstrations (robosuite Lift, PickPlaceCan, ...) into LeRobotDataset v3.0.

robomimic's layout::

    data                      attrs: env_args (JSON: env_name, env_kwargs incl. control_freq), total
    data/demo_<i>/obs/<key>   (N, ...) per observation key; camera keys end in ``_image``
    data/demo_<i>/actions     (N, A)
    data/demo_<i>/rewards     (N,)       optional
    data/demo_<i>/dones       (N,)       optional
    data/demo_<i>/states      (N, S)     optional, MuJoCo sim state (for replay)
    mask/<filter>             optional lists of demo names (e.g. ``train``, ``valid``)

Mapping (LeRobot feature names):

- ``observation.state``: concatenation of the proprioceptive keys (default: those of
  :data:`DEFAULT_STATE_KEYS` present, else every ``robot*`` low-dim key in sorted order); the per-dimension
  ``names`` say which key each number comes from (``robot0_eef_pos.0`` ...).
- ``observation.environment_state``: the ``object`` key (object poses), when present.
- ``observation.images.<camera>``: each ``<camera>_image`` key, as a video feature.
- ``action``, ``next.reward``, ``next.done``; ``observation.sim_state`` (the MuJoCo state) when
  ``include_sim_states``.

robosuite renders images bottom-up (OpenGL) unless its ``IMAGE_CONVENTION`` is ``opencv``; robomimic
datasets generated with the default convention have upside-down images: pass ``flip_images=True``
to store them upright.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data.format import DatasetError
from robopolicy.data.writer import LeRobotDatasetWriter

DEFAULT_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
ENV_STATE_KEY = "object"
TASKS = {
    "Lift": "Lift the cube.",
    "PickPlaceCan": "Pick up the can and place it in its bin.",
    "NutAssemblySquare": "Put the square nut on the square peg.",
    "ToolHang": "Hang the tool on the frame.",
    "TwoArmTransport": "Transport the object to the other table.",
    "Stack": "Stack the red cube on the green cube.",
}
DEFAULT_FPS = 20


def _demo_sort_key(name: str) -> tuple[int, str]:
    m = re.fullmatch(r"demo_(\d+)", name)
    return (int(m.group(1)) if m else 1 << 62, name)


def read_env_args(f: Any) -> dict[str, Any]:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{f.filename}: data attrs 'env_args' is not valid JSON ({e})") from e


def convert_robomimic_hdf5(
    hdf5_path: str | Path,
    output: str | Path,
    state_keys: list[str] | tuple[str, ...] | None = None,
    env_state_key: str | None = ENV_STATE_KEY,
    image_keys: list[str] | tuple[str, ...] | None = None,
    include_sim_states: bool = True,
    filter_key: str | None = None,
    max_episodes: int | None = None,
    task: str | None = None,
    fps: int | None = None,
    flip_images: bool = False,
    overwrite: bool = False,
    video_codec: str = "libx264",
    video_crf: int = 18,
) -> Path:
    """Write the demos of a robomimic HDF5 file as a LeRobot v3.0 dataset at ``output``; returns its path.

    ``image_keys`` None takes every ``*_image`` observation; pass ``[]`` for a low-dim-only dataset.
    """
    import h5py

    hdf5_path = Path(hdf5_path)
    if not hdf5_path.is_file():
        raise DatasetError(f"{hdf5_path}: file does not exist")
    with h5py.File(hdf5_path, "r") as f:
        if "data" not in f:
            raise DatasetError(f"{hdf5_path}: group 'data' is missing (not a robomimic file)")
        env_args = read_env_args(f)
        env_name = env_args.get("env_name", "")
        if filter_key is not None:
            if f"mask/{filter_key}" not in f:
                raise DatasetError(f"{hdf5_path}: filter 'mask/{filter_key}' is missing")
            demos = [d.decode() if isinstance(d, bytes) else str(d) for d in f[f"mask/{filter_key}"][:]]
        else:
            demos = list(f["data"].keys())
        demos.sort(key=_demo_sort_key)
        if max_episodes is not None:
            demos = demos[:max_episodes]
        if not demos:
            raise DatasetError(f"{hdf5_path}: no demos")
        first = f[f"data/{demos[0]}"]
        for field in ("obs", "actions"):
            if field not in first:
                raise DatasetError(f"{hdf5_path}: data/{demos[0]}/{field} is missing")
        obs_keys = list(first["obs"].keys())
        low_dim = [k for k in obs_keys if not k.endswith("_image") and not k.endswith("_depth")]
        if state_keys is None:
            state_keys = [k for k in DEFAULT_STATE_KEYS if k in low_dim] or sorted(k for k in low_dim if k.startswith("robot"))
        if not state_keys:
            raise DatasetError(f"{hdf5_path}: no proprioceptive observation keys found (obs: {obs_keys})")
        missing = [k for k in state_keys if k not in obs_keys]
        if missing:
            raise DatasetError(f"{hdf5_path}: data/{demos[0]}/obs lacks state keys {missing} (has {obs_keys})")
        if env_state_key is not None and env_state_key not in obs_keys:
            env_state_key = None
        if image_keys is None:
            image_keys = [k for k in obs_keys if k.endswith("_image")]
        state_names: list[str] = []
        for k in state_keys:
            width = int(np.prod(first["obs"][k].shape[1:]))
            state_names += [f"{k}.{i}" for i in range(width)]
        action_dim = int(first["actions"].shape[1])
        features: dict[str, dict[str, Any]] = {
            "observation.state": {"dtype": "float32", "shape": [len(state_names)], "names": state_names},
        }
        if env_state_key is not None:
            width = int(np.prod(first["obs"][env_state_key].shape[1:]))
            features["observation.environment_state"] = {"dtype": "float32", "shape": [width], "names": None}
        for k in image_keys:
            h, w, c = first["obs"][k].shape[1:]
            features[f"observation.images.{k[: -len('_image')]}"] = {
                "dtype": "video", "shape": [int(h), int(w), int(c)], "names": ["height", "width", "channels"]}
        features["action"] = {"dtype": "float32", "shape": [action_dim], "names": None}
        has_rewards = "rewards" in first
        has_dones = "dones" in first
        if has_rewards:
            features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
        if has_dones:
            features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
        if include_sim_states and "states" in first:
            features["observation.sim_state"] = {"dtype": "float64", "shape": [int(first["states"].shape[1])], "names": None}
        else:
            include_sim_states = False

        control_freq = env_args.get("env_kwargs", {}).get("control_freq")
        fps = int(fps or control_freq or DEFAULT_FPS)
        task = task or TASKS.get(env_name) or (env_name or "robomimic task")
        robot = env_args.get("env_kwargs", {}).get("robots")
        robot_type = (robot[0] if isinstance(robot, list) and robot else robot) or None
        with LeRobotDatasetWriter(output, fps=fps, features=features, robot_type=robot_type,
                                  video_codec=video_codec, video_crf=video_crf, overwrite=overwrite) as writer:
            for name in demos:
                if f"data/{name}" not in f:
                    raise DatasetError(f"{hdf5_path}: demo {name!r} listed in a mask is missing")
                demo = f[f"data/{name}"]
                where = f"{hdf5_path}: data/{name}"
                actions = np.asarray(demo["actions"], dtype=np.float32)
                n = len(actions)
                if n == 0:
                    raise DatasetError(f"{where}: empty demo")

                def read(key: str, demo=demo, where=where, n=n) -> np.ndarray:
                    if key not in demo["obs"]:
                        raise DatasetError(f"{where}/obs/{key} is missing")
                    a = np.asarray(demo["obs"][key])
                    if len(a) != n:
                        raise DatasetError(f"{where}/obs/{key} has {len(a)} steps, actions have {n}")
                    return a

                data: dict[str, np.ndarray] = {
                    "observation.state": np.concatenate([read(k).reshape(n, -1) for k in state_keys], axis=1).astype(np.float32),
                    "action": actions,
                }
                if env_state_key is not None:
                    data["observation.environment_state"] = read(env_state_key).reshape(n, -1).astype(np.float32)
                for k in image_keys:
                    img = read(k)
                    if img.dtype != np.uint8:
                        raise DatasetError(f"{where}/obs/{k}: images must be uint8, got {img.dtype}")
                    data[f"observation.images.{k[: -len('_image')]}"] = img[:, ::-1].copy() if flip_images else img
                for key, field, dtype in (("next.reward", "rewards", np.float32), ("next.done", "dones", bool)):
                    if key in features:
                        if field not in demo or len(demo[field]) != n:
                            raise DatasetError(f"{where}/{field} is missing or has the wrong length")
                        data[key] = np.asarray(demo[field]).astype(dtype).reshape(n, 1)
                if include_sim_states:
                    states = np.asarray(demo["states"], dtype=np.float64)
                    if states.shape != (n, features["observation.sim_state"]["shape"][0]):
                        raise DatasetError(f"{where}/states has shape {states.shape}, expected ({n}, "
                                           f"{features['observation.sim_state']['shape'][0]})")
                    data["observation.sim_state"] = states
                if not all(np.isfinite(v).all() for v in data.values() if v.dtype.kind == "f"):
                    raise DatasetError(f"{where}: NaN or inf in the demo")
                writer.add_episode(data, task)
    return Path(output)


__all__ = ["DEFAULT_STATE_KEYS", "TASKS", "convert_robomimic_hdf5", "read_env_args"]
