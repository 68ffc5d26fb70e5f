"""Sample-and-select: the critic's choice among K chunks, pairing checks, saving, and training a critic that tells
demonstrations from a policy's excess (and so moves the chosen chunks toward the demonstrations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from robopolicy.data.reader import LeRobotDataset
from robopolicy.policies.base import PolicyLoadError
from robopolicy.policies.selection import ChunkCritic, CriticConfig, SelectingPolicy, select
from robopolicy.train.critic import train_critic
from robopolicy.train.trainer import make_policy_for_dataset

torch.set_num_threads(1)
FLOW = {"type": "flow", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [16, 32], "n_groups": 4,
        "step_embed_dim": 16, "num_inference_steps": 3}


def flow_policy(root, **kw):
    return make_policy_for_dataset({**FLOW, **kw}, LeRobotDataset(root), ["observation.state"], "action",
                                   "min_max").eval()


class TargetCritic(ChunkCritic):
    """Logit = -(distance of the chunk to a fixed target): the selected chunk must be the closest of the K."""

    def __init__(self, policy, target: Tensor):
        super().__init__(CriticConfig.for_policy(policy, hidden_dim=4, n_layers=1), policy.normalizer)
        self.target = target

    def forward(self, obs: dict[str, Tensor], chunk: Tensor) -> Tensor:
        return -(chunk - self.target).pow(2).flatten(1).sum(1)


def test_the_highest_logit_of_k_samples_is_returned(lowdim_dataset):
    policy = flow_policy(lowdim_dataset)
    target = torch.full((8, 2), 0.3)
    selecting = SelectingPolicy(policy, TargetCritic(policy, target), k=6)
    obs = {"observation.state": torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        chosen = selecting.generate_actions(obs, generator=torch.Generator().manual_seed(1))
        repeated = {k: v.repeat_interleave(6, dim=0) for k, v in obs.items()}
        candidates = policy.generate_actions(repeated, generator=torch.Generator().manual_seed(1)).view(3, 6, 8, 2)
    distances = (candidates - target).pow(2).flatten(2).sum(2)  # (3, 6)
    best = candidates[torch.arange(3), distances.argmin(1)]
    torch.testing.assert_close(chosen, best, rtol=0, atol=0)
    assert selecting.last_logits.shape == (3, 6)
    assert not torch.equal(candidates[:, 0], best)  # the choice is not simply the first sample


def test_pairing_refuses_another_policys_critic(lowdim_dataset):
    policy = flow_policy(lowdim_dataset)
    other = flow_policy(lowdim_dataset, horizon=16, n_action_steps=8)
    with pytest.raises(ValueError, match="horizon"):
        SelectingPolicy(policy, ChunkCritic(CriticConfig.for_policy(other), other.normalizer), k=4)
    critic = ChunkCritic(CriticConfig.for_policy(policy), policy.normalizer)
    critic.normalizer = other.normalizer.__class__({"action": {"min": [0.0, 0.0], "max": [9.0, 9.0]}},
                                                   {"observation.state": "identity", "action": "min_max"})
    with pytest.raises(ValueError, match="normalization statistics"):
        SelectingPolicy(policy, critic, k=4)
    with pytest.raises(ValueError, match="k"):
        SelectingPolicy(policy, ChunkCritic(CriticConfig.for_policy(policy), policy.normalizer), k=0)


def test_critic_saves_loads_and_names_a_missing_file(lowdim_dataset, tmp_path):
    policy = flow_policy(lowdim_dataset)
    critic = ChunkCritic(CriticConfig.for_policy(policy, hidden_dim=16, n_layers=2), policy.normalizer).eval()
    critic.save(tmp_path / "critic")
    loaded = ChunkCritic.load(tmp_path / "critic")
    obs, chunk = {"observation.state": torch.randn(4, 2, 2)}, torch.randn(4, 8, 2)
    torch.testing.assert_close(loaded(obs, chunk), critic(obs, chunk), rtol=0, atol=0)
    (tmp_path / "critic" / "critic.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(PolicyLoadError, match="critic.safetensors"):
        ChunkCritic.load(tmp_path / "critic")
    (tmp_path / "critic" / "critic.json").unlink()
    with pytest.raises(FileNotFoundError, match="critic.json"):
        ChunkCritic.load(tmp_path / "critic")


def test_a_trained_critic_tells_demos_from_a_biased_policy_and_selection_moves_toward_the_demos(lowdim_dataset,
                                                                                                   tmp_path):
    """An untrained flow policy (random weights) samples chunks far from the demonstrations; the critic learns to tell them apart on
    held-out windows, and choosing the best of 16 brings the executed chunk closer to the demonstrated one."""
    torch.manual_seed(0)
    policy = flow_policy(lowdim_dataset)
    critic, report = train_critic(policy, lowdim_dataset, ["observation.state"], steps=400, batch_size=128,
                                  max_windows=2000, hidden_dim=64, n_layers=2, progress=False)
    assert report["held_out_accuracy"] > 0.8, report
    assert report["held_out_loss"] < 0.7 * report["first_loss"], report
    critic.save(tmp_path / "critic")
    policy.save(tmp_path / "policy")
    selecting = select(str(tmp_path / "policy"), str(tmp_path / "critic"), k=16)

    from robopolicy.data.sampler import WindowSampler

    ds = LeRobotDataset(lowdim_dataset)
    data = {k: policy.normalizer.normalize(k, torch.from_numpy(ds.column(k)).float())
            for k in ("observation.state", "action")}
    windows = WindowSampler(data, ds.episode_bounds, ["observation.state"], "action", 2, 8, 4)
    batch = windows.get(torch.arange(0, len(windows), max(1, len(windows) // 200)))
    obs = {"observation.state": batch["observation.state"]}
    untrained = SelectingPolicy(policy, ChunkCritic(CriticConfig.for_policy(policy, hidden_dim=64, n_layers=2),
                                                    policy.normalizer).eval(), k=16)  # the control: an arbitrary pick
    with torch.no_grad():
        one = policy.generate_actions(obs, generator=torch.Generator().manual_seed(3))
        best = selecting.generate_actions(obs, generator=torch.Generator().manual_seed(3))
        arbitrary = untrained.generate_actions(obs, generator=torch.Generator().manual_seed(3))
    err_one, err_best, err_arbitrary = ((x - batch["action"]).pow(2).mean().item() for x in (one, best, arbitrary))
    assert np.isfinite(err_best) and err_best < 0.9 * err_one and err_best < 0.9 * err_arbitrary, \
        (err_best, err_one, err_arbitrary)
