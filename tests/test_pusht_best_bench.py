"""bench/pusht_best.py: every candidate is a valid ``robopolicy train`` command (a typo would otherwise surface only
after the hour-long run it was meant to start)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

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


def test_the_demo_scale_levers_change_only_their_lever(best):
    """Schedule and batch are judged against the demo's seed-0 run, so each candidate must be `make demo`'s training
    with that one thing changed (the batch lever at the same number of samples, the rule's learning rate)."""
    demo = OmegaConf.to_container(load_config("demo", []).train, resolve=True)
    ignored = {"output_dir", "log_every", "num_threads", "progress", "time_budget_min"}

    def changed(name: str) -> dict:
        cfg = OmegaConf.to_container(load_config("train", [*best.CANDIDATES[name], "num_threads=1"]), resolve=True)
        return {k: cfg[k] for k in cfg if k not in ignored and cfg[k] != demo.get(k)}

    assert changed("demo") == {}
    assert changed("demo_constant_lr") == {"lr_schedule": "constant_with_warmup"}
    batch = changed("demo_batch512")
    assert batch == {"batch_size": 512, "steps": 1500, "lr": 1e-3, "warmup_steps": 250}
    assert batch["batch_size"] * batch["steps"] == demo["batch_size"] * demo["steps"]
    assert batch["lr"] / demo["lr"] == batch["batch_size"] / demo["batch_size"]
