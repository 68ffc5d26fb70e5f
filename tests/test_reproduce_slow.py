"""The cheapest headline reproduction, end to end from the documented commands (slow: 4 minutes on the 2-core VM with
three training jobs beside it, 2026-12-06; run before a release or after touching training, the quadrotor simulator, the expert or the MLP
policy; see README, "Tests").

Records the hover demos with the SE(3) expert and DART noise, trains the hover MLP as the documented 3-member ensemble
(``policy.ensemble=3``, the route that meets the crash bound over training seeds) and flies it on a held-out seed
block (docs/benchmarks.md, "Reproduction across training seeds"). A regression in training, simulation, the expert,
the ensemble or the observation shows up as a rate beyond the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("l2f")

# docs/benchmarks.md ("Reproduction across training seeds"): over three training seeds the ensemble route averages
# 99.74 % success and 0.26 % crashes; single runs on single 2,048-start blocks (held-out and validation) ranged
# 99.61-99.85 % and 0.15-0.39 %.
# One run is held to the bound itself (>= 99 % success, <= 0.5 % crashes), which every measured run met.
# (Training seed 0 on block 300000 measured 99.76 % and 0.24 %; record and training are deterministic on one thread.)
SINGLE_RUN_MIN_SUCCESS = 0.99
SINGLE_RUN_MAX_CRASH = 0.005
HELD_OUT_BLOCK = 300000


def robopolicy(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], check=True, cwd=cwd, env=env, timeout=1800)


@pytest.mark.slow
def test_quadrotor_hover_mlp_ensemble_reproduces_from_the_documented_commands(tmp_path):
    robopolicy("record", "task=quadrotor_hover", "device=expert", "num_episodes=1000", "output=hover_expert",
               cwd=tmp_path)
    robopolicy("train", "policy=mlp_quadrotor", "policy.ensemble=3", "dataset.root=hover_expert",
               "dataset.observation_keys=[observation.state]",
               "steps=100000", "batch_size=512", "lr=1e-3", "num_threads=1", "progress=false", "seed=0",
               "output_dir=run", cwd=tmp_path)
    robopolicy("eval", "checkpoint=run/policy", "env.name=quadrotor_hover", "n_episodes=2048",
               f"start_seed={HELD_OUT_BLOCK}", "output_dir=eval", cwd=tmp_path)
    report = json.loads((tmp_path / "eval" / "eval_report.json").read_text())
    assert report["n_episodes"] == 2048
    assert report["success_rate"] >= SINGLE_RUN_MIN_SUCCESS, report
    assert report["crash_rate"] <= SINGLE_RUN_MAX_CRASH, report
