"""The runtime runs an exported artifact with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robopolicy.data.reader import LeRobotDataset
from robopolicy.export import export_policy
from robopolicy.train.trainer import make_policy_for_dataset

REPO = Path(__file__).resolve().parents[1]

RUN_ARTIFACT = """
import sys
import numpy as np
from robopolicy.runtime import OnnxPolicy
for path in sys.argv[1:]:
    for graph in ("per_step", "fused"):
        p = OnnxPolicy.load(path, graph=graph)
        p.reset()
        actions = [p.select_action({"observation.state": np.full(2, 0.1 * i, np.float32)}) for i in range(5)]
        assert all(a.shape == (2,) and np.isfinite(a).all() for a in actions), actions
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
assert not any(m.startswith("robopolicy.policies") for m in sys.modules), "robopolicy.policies was imported"
print("OK")
"""

BLOCK_TORCH = """
import importlib.abc, sys
class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("robopolicy.policies"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
        return None
sys.meta_path.insert(0, _BlockTorch())
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> list[Path]:
    from tests.conftest import linear_mapping_episodes, write_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("notorch")
    ds = LeRobotDataset(write_dataset(root / "ds", linear_mapping_episodes(n_episodes=2)))
    out = []
    for cfg in ({"type": "diffusion", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "down_dims": [16, 32],
                 "n_groups": 4, "step_embed_dim": 16, "num_inference_steps": 3},
                {"type": "sfp", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "hidden_dim": 16, "n_layers": 1,
                 "time_embed_dim": 8, "integration_steps_per_action": 1}):
        policy = make_policy_for_dataset(cfg, ds, ["observation.state"], "action", "min_max")
        out.append(export_policy(policy, root / cfg["type"]))
    return out


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_runtime_runs_with_torch_blocked(artifacts):
    code = BLOCK_TORCH + RUN_ARTIFACT
    proc = subprocess.run([sys.executable, "-c", code, *map(str, artifacts)], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


# The static import checks and the installed-runtime check live in tests/test_architecture.py (import-linter
# contracts) and tests/test_install.py (the wheel in a fresh venv without torch).
