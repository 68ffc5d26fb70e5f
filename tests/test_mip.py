"""MIP, the two-step minimal iterative policy: its objective, its two-evaluation inference, training through
``robopolicy train policy=mip``, checkpoints and configuration errors. (ONNX parity: tests/test_export.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from robopolicy.configs import load_config
from robopolicy.data.normalize import Normalizer
from robopolicy.data.reader import LeRobotDataset
from robopolicy.policies import load_policy
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.mip.modeling import MipPolicy
from robopolicy.policies.registry import get_policy_class
from robopolicy.train.trainer import Trainer, make_policy_for_dataset

torch.set_num_threads(1)

TINY = {"type": "mip", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [16, 32], "n_groups": 4,
        "step_embed_dim": 16}


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class RecordingNet(nn.Module):
    """Wraps the policy's network and records each call's (x, t), so the tests see what the two steps feed it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.net(x, t, cond)
        self.calls.append((x.detach().clone(), t.detach().clone(), out.detach().clone()))
        return out


def tensor_policy(**overrides) -> MipPolicy:
    modes = {"observation.state": "identity", "action": "identity"}
    config = get_policy_class("mip").config_class(
        **{k: v for k, v in TINY.items() if k != "type"}, input_features=[FeatureSpec("observation.state", (2,))],
        output_features=[FeatureSpec("action", (2,))], normalization=modes, **overrides)
    policy = get_policy_class("mip")(config, Normalizer({}, modes))
    with torch.no_grad():  # non-trivial weights (the U-Net zero-initializes nothing, but keep outputs varied)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g(0)))
    return policy


def test_the_loss_is_two_regressions_to_the_chunk_from_the_empty_and_the_noised_chunk():
    policy = tensor_policy(t_star=0.8)
    policy.net = recorder = RecordingNet(policy.net)
    batch = {"observation.state": torch.randn(5, 2, 2, generator=g(1)), "action": torch.rand(5, 8, 2, generator=g(2))}
    loss = policy.compute_loss(batch, generator=g(3))
    assert len(recorder.calls) == 2
    (x1, t1, out1), (x2, t2, out2) = recorder.calls
    a = batch["action"]
    assert torch.equal(x1, torch.zeros_like(a)) and torch.equal(t1, torch.zeros(5))
    assert torch.allclose(t2, torch.full((5,), 0.8))
    # The second input is 0.8 a + 0.2 z: unit-variance noise around 0.8 a, drawn from the generator.
    z = (x2 - 0.8 * a) / 0.2
    assert abs(z.mean().item()) < 0.3 and 0.7 < z.std().item() < 1.3
    policy.net = recorder.net
    torch.testing.assert_close(policy.compute_loss(batch, generator=g(3)), loss, rtol=0, atol=0)  # same draws
    assert not torch.equal(policy.compute_loss(batch, generator=g(4)), loss)
    torch.testing.assert_close(loss, F.mse_loss(out1, a) + F.mse_loss(out2, a))


def test_acting_is_two_deterministic_evaluations_the_second_from_t_star_times_the_first():
    policy = tensor_policy(t_star=0.9, clip_sample_range=0.05).eval()
    policy.net = recorder = RecordingNet(policy.net)
    obs = {"observation.state": torch.randn(3, 2, 2, generator=g(1))}
    with torch.no_grad():
        chunk = policy.generate_actions(obs, generator=g(5))
    assert len(recorder.calls) == 2
    (x1, t1, a0), (x2, t2, out) = recorder.calls
    assert torch.equal(x1, torch.zeros(3, 8, 2)) and torch.equal(t1, torch.zeros(3))
    torch.testing.assert_close(x2, 0.9 * a0) and torch.testing.assert_close(t2, torch.full((3,), 0.9))
    assert out.abs().max() > 0.05  # the clip bites, and is applied to the second step's chunk
    torch.testing.assert_close(chunk, out.clamp(-0.05, 0.05), rtol=0, atol=0)
    with torch.no_grad():  # no noise at inference: another generator gives the same chunk
        torch.testing.assert_close(policy.generate_actions(obs, generator=g(6)), chunk, rtol=0, atol=0)


def test_mip_fits_an_observation_to_chunk_map_the_second_step_better_than_the_first():
    """Trained on tensors (the chunk a fixed function of the observation), the two-step chunk lands close to the
    target, and no worse than the first step alone: the second step corrects."""
    torch.manual_seed(0)
    policy = tensor_policy()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    gen = g(0)

    def target(state: Tensor) -> Tensor:  # (B, To, 2) -> (B, 8, 2): a ramp from the latest state
        ramp = torch.linspace(0, 1, 8)[None, :, None]
        return (0.5 * state[:, -1:, :] * (1 - ramp) + 0.3 * ramp).clamp(-1, 1)

    for _ in range(300):
        state = torch.rand(64, 2, 2, generator=gen) * 2 - 1
        loss = policy.compute_loss({"observation.state": state, "action": target(state)}, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    state = torch.rand(256, 2, 2, generator=g(9)) * 2 - 1
    policy.net = recorder = RecordingNet(policy.net)
    with torch.no_grad():
        chunk = policy.generate_actions({"observation.state": state})
    first = recorder.calls[0][2]
    err, err_first = F.mse_loss(chunk, target(state)).item(), F.mse_loss(first, target(state)).item()
    assert err < 5e-3, err
    assert err <= 1.1 * err_first, (err, err_first)


def test_trains_through_the_cli_config_and_round_trips(lowdim_dataset, tmp_path):
    cfg = load_config("train", ["policy=mip", f"dataset.root={lowdim_dataset}",
                                "dataset.observation_keys=[observation.state]", f"output_dir={tmp_path / 'run'}",
                                "progress=false", "num_threads=1"])
    cfg.policy = OmegaConf.merge(cfg.policy, {k: v for k, v in TINY.items() if k != "type"})
    for k, v in {"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "log_every": 10,
                 "save_every": 150}.items():
        cfg[k] = v
    torch.manual_seed(0)
    run_dir = Trainer(cfg).fit()
    log = np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)
    assert log["loss"][-2:].mean() < 0.5 * log["loss"][:1].mean(), log["loss"]
    policy = load_policy(run_dir / "policy")
    assert isinstance(policy, MipPolicy) and policy.config.t_star == 0.9
    obs = {"observation.state": torch.randn(4, 2, 2)}
    policy.save(tmp_path / "again")
    torch.testing.assert_close(load_policy(tmp_path / "again").predict_chunk(obs), policy.predict_chunk(obs),
                               rtol=0, atol=0)
    policy.reset()
    actions = [policy.select_action({"observation.state": np.zeros(2, np.float32)}) for _ in range(5)]
    assert all(a.shape == (2,) and np.isfinite(a).all() for a in actions)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"t_star": 1.0}, "t_star"),
    ({"t_star": 0.0}, "t_star"),
    ({"clip_sample_range": 0.0}, "clip_sample_range"),
    ({"backbone": "rnn"}, "backbone"),
    ({"horizon": 7}, "divisible"),
    ({"integrator": "euler"}, "unknown config fields"),  # flow's sampler fields do not apply to MIP
])
def test_config_errors_name_the_field(lowdim_dataset, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_policy_for_dataset({**TINY, **overrides}, LeRobotDataset(lowdim_dataset), ["observation.state"], "action",
                                "min_max")
