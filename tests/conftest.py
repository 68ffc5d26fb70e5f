"""Shared fixtures: small datasets written with the project's own writer."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data.writer import LeRobotDatasetWriter

SHARED_PUSHT_ZARR = Path(__file__).resolve().parents[1].parent / "shared/data/pusht/pusht_cchi_v7_replay.zarr"
# ZeroMQ ipc:// endpoints are socket files; they live here (a short path: the limit is ~100 bytes) and go at exit.
IPC_DIR = Path(tempfile.mkdtemp(prefix="robopolicy-ipc-"))


def ipc_address(tag: str) -> str:
    return f"ipc://{IPC_DIR}/{tag}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def _remove_ipc_sockets():
    yield
    shutil.rmtree(IPC_DIR, ignore_errors=True)


def linear_mapping_episodes(n_episodes: int = 8, length: int = 30, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Episodes whose action is a fixed linear function of the state: a mapping a policy must learn."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        state = rng.uniform(-1, 1, size=(length, 2)).astype(np.float32)
        action = np.stack([state[:, 0] + 0.5 * state[:, 1], -state[:, 1]], axis=1).astype(np.float32)
        episodes.append({"observation.state": state, "action": action})
    return episodes


LOWDIM_FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
}


def write_dataset(root: Path, episodes: list[dict[str, np.ndarray]], features=None, fps: int = 10, **kw) -> Path:
    with LeRobotDatasetWriter(root, fps=fps, features=features or LOWDIM_FEATURES, robot_type="toy", **kw) as w:
        for i, ep in enumerate(episodes):
            w.add_episode(ep, task=f"task {i % 2}")
    return root


@pytest.fixture
def lowdim_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "lowdim", linear_mapping_episodes())


@pytest.fixture(scope="session", autouse=True)
def _feetech_sdk_latency_budget():
    """The Feetech SDK waits 2 x LATENCY_TIMER (16 ms) + 2 ms for a servo's reply, the USB adapter's latency on a
    real bus. The simulated servos answer from another thread or process of this 2-core machine, which a busy
    scheduler can hold up past 34 ms; 100 ms keeps the SDK's own timeout path (a silent servo still times out) while
    making the tests independent of scheduling."""
    import scservo_sdk.port_handler as port_handler

    mp = pytest.MonkeyPatch()
    mp.setattr(port_handler, "LATENCY_TIMER", 100)
    yield
    mp.undo()
