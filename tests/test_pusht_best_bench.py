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
    assert {"preset", "mip", "diffusion_mirror_final"} <= set(best.CANDIDATES)
    for name, overrides in best.CANDIDATES.items():
        cfg = load_config("train", [*overrides, "num_threads=1", "output_dir=/tmp/unused"])
        policy = policy_config_from(cfg.policy)
        assert cfg.steps * policy.horizon > 0, name
        if name == "mip":  # the winner's recipe on MIP: Ta 12, the mirrored demos, noise and final-approach weighting
            assert policy.type == "mip" and policy.n_action_steps == 12
            assert cfg.dataset.root == "bundled:pusht_mirror" and cfg.final_approach_weight == 3
    # GPC composes the diffusion candidate with the preset: the same data, To, T and Ta, or compose() refuses them
    preset, dp = (load_config("train", best.CANDIDATES[n]) for n in ("preset", "diffusion_mirror_final"))
    assert preset.dataset.root == dp.dataset.root
    assert [preset.policy[k] for k in ("n_obs_steps", "horizon", "n_action_steps")] == \
        [dp.policy[k] for k in ("n_obs_steps", "horizon", "n_action_steps")]
