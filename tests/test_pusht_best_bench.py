"""bench/pusht_best.py: every candidate is a valid ``robopolicy train`` command (a typo would otherwise surface only
after the hour-long run it was meant to start)."""

from __future__ import annotations

import pytest

from robopolicy.configs import load_config, policy_config_from
from tests.helpers import bench_module


@pytest.fixture(scope="module")
def best():
    yield from bench_module("pusht_best")


def test_every_candidate_composes_into_a_typed_config(best):
    assert {"preset", "mip"} <= set(best.CANDIDATES)
    for name, overrides in best.CANDIDATES.items():
        cfg = load_config("train", [*overrides, "num_threads=1", "output_dir=/tmp/unused"])
        policy = policy_config_from(cfg.policy)
        assert cfg.steps * policy.horizon > 0, name
        if name == "mip":  # the winner's recipe on MIP: Ta 12, the mirrored demos, noise and final-approach weighting
            assert policy.type == "mip" and policy.n_action_steps == 12
            assert cfg.dataset.root == "bundled:pusht_mirror" and cfg.final_approach_weight == 3
