"""GPC-style composition of a diffusion and a flow policy: matched noise levels, the convex combination of scores
(checked on Gaussians, where every score is known in closed form), the limits w = 0 and w = 1, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.composition import ComposedPolicy
from robopolicy.policies.registry import get_policy_class

torch.set_num_threads(1)
MODES = {"observation.state": "identity", "action": "identity"}


def member(kind: str, horizon: int = 8, **kw):
    small = {"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16}
    cls = get_policy_class(kind)
    config = cls.config_class(n_obs_steps=2, horizon=horizon, n_action_steps=4, normalization=dict(MODES),
                              input_features=[FeatureSpec("observation.state", (2,))],
                              output_features=[FeatureSpec("action", (2,))], **small, **kw)
    policy = cls(config, Normalizer({}, dict(MODES)))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy.eval()


class GaussianFlowNet(nn.Module):
    """The exact rectified-flow velocity for data N(mu, s^2) per coordinate: v = (E[x1 | x_t] - x_t) / (1 - t)."""

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        t = t[:, None, None].double()
        x1 = self.mu + t * self.s**2 * (x.double() - t * self.mu) / (t**2 * self.s**2 + (1 - t) ** 2)
        return ((x1 - x) / (1 - t)).float()


class GaussianEpsNet(nn.Module):
    """The exact diffusion noise prediction E[eps | x] for data N(mu, s^2) on a VP schedule; a fractional timestep
    takes the log-SNR between its two neighbours (np.interp), as a network evaluated between trained timesteps."""

    def __init__(self, mu: float, s: float, alphas_cumprod: Tensor):
        super().__init__()
        self.mu, self.s = mu, s
        a = alphas_cumprod.double().numpy()
        self.log_snr = np.log(a / (1 - a))

    def forward(self, x: Tensor, tau: Tensor, cond: Tensor) -> Tensor:
        log_snr = np.interp(tau.double().numpy(), np.arange(len(self.log_snr)), self.log_snr)
        alpha_bar = torch.as_tensor(1 / (1 + np.exp(-log_snr)))[:, None, None]
        a, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        return (sigma * (x.double() - a * self.mu) / (a**2 * self.s**2 + sigma**2)).float()


def gaussian_composition(weight: float, steps: int = 100) -> ComposedPolicy:
    diffusion, flow = member("diffusion"), member("flow")
    diffusion.net = GaussianEpsNet(0.4, 0.1, diffusion.train_scheduler.alphas_cumprod)
    flow.net = GaussianFlowNet(-0.2, 0.1)
    return ComposedPolicy(diffusion, flow, weight, num_inference_steps=steps)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
def test_the_composition_samples_the_convex_combination_of_the_two_gaussians(weight):
    """Two Gaussians of equal spread, N(0.4, 0.1^2) learned by diffusion and N(-0.2, 0.1^2) by flow: the convex
    combination of their scores at every noise level is the score of N(w 0.4 + (1 - w) (-0.2), 0.1^2). A mistake in
    matching the noise levels or in the VP scaling moves the mean or the spread. (100 Euler steps shrink the spread
    to about 0.096 for the flow alone; past the diffusion schedule's cleanest level, t > 0.975, its estimate is off
    by up to 0.005, which moves the mean by about 0.003.)"""
    policy = gaussian_composition(weight)
    obs = {"observation.state": torch.zeros(2000, 2, 2)}
    with torch.no_grad():
        chunks = policy.generate_actions(obs, generator=torch.Generator().manual_seed(1))
    expected = weight * 0.4 + (1 - weight) * -0.2
    assert abs(chunks.mean().item() - expected) < 0.005, (chunks.mean().item(), expected)
    assert abs(chunks.std().item() - 0.1) < 0.008, chunks.std().item()


def test_weight_zero_is_the_flow_policys_own_euler_sampler():
    diffusion, flow = member("diffusion"), member("flow", num_inference_steps=10)
    policy = ComposedPolicy(diffusion, flow, 0.0, num_inference_steps=10)
    obs = {"observation.state": torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(2))}
    noise = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(policy.generate_actions(obs, noise=noise), flow.generate_actions(obs, noise=noise),
                                   rtol=1e-5, atol=1e-5)


def test_matched_levels_round_trip_the_diffusion_schedule():
    policy = gaussian_composition(0.5)
    alphas = policy.diffusion.train_scheduler.alphas_cumprod.double()
    for tau in (0, 1, 17, 50, 98, 99):
        a = float(alphas[tau])
        t = math.sqrt(a) / (math.sqrt(a) + math.sqrt(1 - a))  # rectified-flow time with the same SNR
        got_tau, got_alpha = policy.diffusion_level(t)
        assert got_tau == pytest.approx(tau, abs=1e-6) and got_alpha == pytest.approx(a, rel=1e-6)
    assert policy.diffusion_level(0.0) == (99.0, pytest.approx(float(alphas[99])))  # pure noise: the noisiest level
    assert policy.diffusion_level(1 - 1e-9)[0] == 0.0  # cleaner than any trained level: the cleanest
    taus = [policy.diffusion_level(k / 50)[0] for k in range(50)]
    assert all(a >= b for a, b in zip(taus, taus[1:]))  # later flow time, less noise, smaller timestep


def test_select_action_runs_the_composition_with_its_queue():
    policy = ComposedPolicy(member("diffusion"), member("flow"), 0.5, n_action_steps=3)
    policy.reset()
    actions = [policy.select_action({"observation.state": np.zeros(2, np.float32)},
                                    generator=torch.Generator().manual_seed(0)) for _ in range(7)]
    assert all(a.shape == (2,) and np.isfinite(a).all() for a in actions)
    assert policy.config.n_action_steps == 3


def test_refusals_name_what_differs():
    diffusion, flow = member("diffusion"), member("flow")
    with pytest.raises(ValueError, match="horizon"):
        ComposedPolicy(member("diffusion", horizon=16), flow, 0.5)
    with pytest.raises(ValueError, match="convex"):
        ComposedPolicy(diffusion, flow, 1.5)
    with pytest.raises(TypeError, match="diffusion policy with a flow policy"):
        ComposedPolicy(flow, diffusion, 0.5)
    other = member("flow")
    other.normalizer = Normalizer({"action": {"min": [0.0, 0.0], "max": [2.0, 2.0]}}, {**MODES, "action": "min_max"})
    with pytest.raises(ValueError, match="normalization statistics differ"):
        ComposedPolicy(diffusion, other, 0.5)
    with pytest.raises(TypeError, match="two checkpoints and a weight"):
        ComposedPolicy(diffusion, flow, 0.5).save("/tmp/unused")


def test_compose_loads_two_checkpoints(tmp_path):
    from robopolicy.policies.composition import compose

    diffusion, flow = member("diffusion"), member("flow")
    diffusion.save(tmp_path / "dp")
    flow.save(tmp_path / "flow")
    policy = compose(str(tmp_path / "dp"), str(tmp_path / "flow"), 0.25, num_inference_steps=5, n_action_steps=2)
    assert policy.weight == 0.25 and policy.num_inference_steps == 5 and policy.config.n_action_steps == 2
    obs = {"observation.state": torch.randn(2, 2, 2)}
    noise = torch.randn(2, 8, 2)
    with torch.no_grad():
        torch.testing.assert_close(policy.generate_actions(obs, noise=noise),
                                   ComposedPolicy(diffusion, flow, 0.25, 5).generate_actions(obs, noise=noise))
    with pytest.raises(TypeError, match="diffusion policy with a flow policy"):
        compose(str(tmp_path / "flow"), str(tmp_path / "dp"), 0.5)
