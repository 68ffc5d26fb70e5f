"""Flow-matching policy: rectified flow from Gaussian noise to normalized action chunks.

Training pairs noise x0 ~ N(0, I) with a demonstrated chunk x1 (B, T, A), picks a time t, and
regresses the network's velocity at x_t = (1 - t) x0 + t x1 onto the straight-line velocity x1 - x0.
Sampling integrates dx/dt = v(x, t | obs) from t = 0 (noise) to t = 1 (a chunk) with a fixed-step
integrator, optionally AdaFlow-style adaptive (one step when the flow turns out to be straight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import Policy
from robopolicy.policies.chunk_backbone import make_chunk_backbone
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.flow.configuration import FlowConfig
from robopolicy.policies.flow.integrators import VelocityField, check_method, integrate, nfe
from robopolicy.policies.noise import rand, randn
from robopolicy.policies.registry import register_policy


@register_policy("flow")
class FlowPolicy(Policy):
    config_class = FlowConfig

    def __init__(self, config: FlowConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.config: FlowConfig = config
        self.encoder = make_observation_encoder(config.input_features, config.n_obs_steps, config.image_encoder)
        self.net = make_chunk_backbone(config, self.encoder.output_dim)  # its output is read as a velocity
        # Velocity evaluations each chunk of the last generate_actions call actually used, (B,).
        self.last_nfe: Tensor | None = None
        # Adaptive mode's straightness measure per chunk of the last call, (B,).
        self.last_velocity_change: Tensor | None = None

    # ---- sampler settings -----------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        """Network evaluations per chunk of the fixed-step sampler (adaptive mode: the most it uses)."""
        c = self.config
        if c.adaptive:
            return 2 + nfe(c.integrator, c.num_inference_steps - 1)
        return nfe(c.integrator, c.num_inference_steps)

    def set_sampler(self, kind: str | None = None, num_inference_steps: int | None = None) -> None:
        """Switch integrator (``kind``: euler | midpoint | heun | rk4) or step count of a trained policy.

        Same signature as the diffusion family's, so ``robopolicy eval`` sampler overrides work.
        """
        if kind is not None:
            check_method(kind)
            self.config.integrator = kind
        if num_inference_steps is not None:
            self.config.num_inference_steps = num_inference_steps
        self.config.__post_init__()

    # ---- training -------------------------------------------------------------------------------
    def sample_time(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training times in [0, 1): uniform, or pi0's Beta emphasis on the noisy end (small t here).

        Beta(alpha, 1) has CDF u^alpha, so u = U^(1/alpha) samples it by inverting the CDF, which keeps
        every draw on ``generator`` (torch's Beta distribution cannot take one).
        """
        u = rand((n,), generator, device)
        if self.config.time_sampling == "uniform":
            return u
        beta = u.pow(1.0 / self.config.time_beta_alpha)
        return self.config.time_beta_s * (1.0 - beta)

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        x1 = batch[self.action_key]
        cond = self.encoder(batch, generator=generator)
        x0 = randn(tuple(x1.shape), generator, x1.device)
        t = self.sample_time(x1.shape[0], generator, x1.device)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        return F.mse_loss(self.net(xt, t, cond), x1 - x0)

    # ---- sampling -------------------------------------------------------------------------------
    def velocity_field(self, cond: Tensor) -> VelocityField:
        """v(x, t) for one batch of observation conditions: what the integrators (and export) call."""

        def v(x: Tensor, t: float) -> Tensor:
            return self.net(x, torch.full((x.shape[0],), t, device=x.device), cond)

        return v

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None,
                         noise: Tensor | None = None) -> Tensor:
        cond = self.encoder(obs)
        shape = (cond.shape[0], self.config.horizon, self.config.action_dim)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x0 = noise.to(cond.device) if noise is not None else randn(shape, generator, cond.device)
        c = self.config
        if c.adaptive:
            x = self._sample_adaptive(x0, cond)
        else:
            x = integrate(self.velocity_field(cond), x0, c.integrator, c.num_inference_steps)
            self.last_nfe = torch.full((shape[0],), self.nfe, dtype=torch.long)
            self.last_velocity_change = None
        if c.clip_sample:
            x = x.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x

    def _sample_adaptive(self, x0: Tensor, cond: Tensor) -> Tensor:
        """AdaFlow-style: a probe step decides, per chunk, between one more Euler step and all N steps.

        Estimator: the mean squared change of the velocity across one Euler probe step from t = 0
        to t_p = ``adaptive_probe_t``, mean((v(x_p, t_p) - v(x_0, 0))^2) in normalized action units.
        Along a straight flow (the chunk is a deterministic function of the observation) the velocity
        is constant, so the change is zero; where several chunks are plausible, the posterior mean
        E[x1 | x_t] moves as x_t commits to one of them and the velocity turns. A far probe (t_p = 0.5)
        sees that turn for almost every noise draw, a probe of one step (t_p = 1/N) only for draws
        that commit early. The spread of v(x_0, 0) over noise draws would not work: at t = 0 the
        velocity is E[x1 | obs] - x0 whatever the modes are.

        Straight chunks finish with one Euler step from the probe point: 2 NFE. The others take the
        first Euler step of size 1/N with the v(x_0, 0) already computed, then the configured
        integrator over [1/N, 1] with N - 1 steps: 2 + NFE(method, N - 1); for Euler that is the
        fixed sampler's result for one evaluation more.
        """
        c = self.config
        v = self.velocity_field(cond)
        tp, h = c.adaptive_probe_t, 1.0 / c.num_inference_steps
        v0 = v(x0, 0.0)
        xp = x0 + tp * v0
        vp = v(xp, tp)
        change = (vp - v0).pow(2).flatten(1).mean(dim=1)
        straight = change < c.adaptive_threshold
        x = xp + (1.0 - tp) * vp
        used = torch.full((x0.shape[0],), 2, dtype=torch.long)
        curved = (~straight).nonzero().squeeze(1)
        if len(curved):
            x1 = x0[curved] + h * v0[curved]
            x[curved] = integrate(self.velocity_field(cond[curved]), x1, c.integrator, c.num_inference_steps - 1,
                                  t0=h, t1=1.0)
            used[curved.cpu()] += nfe(c.integrator, c.num_inference_steps - 1)
        self.last_nfe = used
        self.last_velocity_change = change
        return x
