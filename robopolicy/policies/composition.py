"""GPC-style test-time composition: a diffusion policy and a flow policy, trained on the same data, sampled as one.

"Compose Your Policies!" (GPC) combines pre-trained policies by a convex combination of their scores at each noise
level and samples with the shared ODE. A diffusion policy (VP schedule, epsilon or sample prediction, integer
timesteps) and a flow policy (rectified flow, velocity, t in [0, 1]) speak different units, so both are read here as
the same quantity: the denoised chunk E[x1 | x_t] at the same signal-to-noise ratio.

- Flow, at rectified-flow state x_t = t x1 + (1 - t) eps:  x1_hat = x_t + (1 - t) v(x_t, t).
- Diffusion: the VP level with the same SNR, alpha_bar / (1 - alpha_bar) = t^2 / (1 - t)^2, found on the schedule's
  log-SNR table (a fractional timestep between two trained ones; clamped at the schedule's ends); the VP state is
  x_t / sqrt(t^2 + (1 - t)^2); x1_hat = (x_vp - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar), clipped like
  the diffusion sampler's own estimate. (The same eps is rectified flow's: x_vp and x_t share their noise.)

At a fixed noise level the score is affine in x1_hat with the same coefficients for both, so the convex combination
x1_hat = w x1_hat_diffusion + (1 - w) x1_hat_flow is the convex combination of the scores. Each Euler step of the
rectified-flow ODE then moves x_t along (x1_hat - x_t) / (1 - t), which for w = 0 is the flow policy's own Euler
sampler and for w = 1 is DDIM on the diffusion policy (DDIM is Euler on this ODE in x1_hat form).

A composition is two checkpoints and a weight; it is built from loaded policies and is not saved as one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robopolicy.policies.base import Policy, PolicyConfig
from robopolicy.policies.diffusion.modeling import DiffusionPolicy
from robopolicy.policies.flow.modeling import FlowPolicy
from robopolicy.policies.noise import randn
from robopolicy.policies.registry import load_policy


class ComposedPolicy(Policy):
    """w * diffusion + (1 - w) * flow, at matched noise levels; ``num_inference_steps`` Euler steps per chunk."""

    name = "gpc"

    def __init__(self, diffusion: DiffusionPolicy, flow: FlowPolicy, weight: float, num_inference_steps: int = 10,
                 n_action_steps: int | None = None):
        if not isinstance(diffusion, DiffusionPolicy) or not isinstance(flow, FlowPolicy):
            raise TypeError(f"compose a diffusion policy with a flow policy, got {type(diffusion).__name__} and "
                            f"{type(flow).__name__}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the diffusion weight must be in [0, 1] (a convex combination), got {weight}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        dc, fc = diffusion.config, flow.config
        for field in ("n_obs_steps", "horizon", "input_features", "output_features", "normalization"):
            if getattr(dc, field) != getattr(fc, field):
                raise ValueError(f"the two policies differ in {field} ({getattr(dc, field)} vs {getattr(fc, field)}): "
                                 "compose policies trained on the same data with the same To and T")
        if diffusion.normalizer.to_dict() != flow.normalizer.to_dict():
            raise ValueError("the two policies' normalization statistics differ: they were trained on different data, "
                             "so their normalized chunks are not the same quantity")
        if dc.per_position_noise:
            raise ValueError("the diffusion policy was trained with per-position noise (streaming); compose a "
                             "standard one")
        ta = fc.n_action_steps if n_action_steps is None else n_action_steps
        config = PolicyConfig(type="gpc", n_obs_steps=fc.n_obs_steps, horizon=fc.horizon, n_action_steps=ta,
                              input_features=list(fc.input_features), output_features=list(fc.output_features),
                              normalization=dict(fc.normalization), fps=fc.fps)
        super().__init__(config, flow.normalizer)
        self.diffusion, self.flow = diffusion.eval(), flow.eval()
        self.weight, self.num_inference_steps = float(weight), num_inference_steps
        alphas = diffusion.train_scheduler.alphas_cumprod.double()
        self.register_buffer("log_snr", (alphas / (1 - alphas)).log(), persistent=False)  # decreasing in tau

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        raise TypeError("a composition is not trained: train its diffusion and flow policies, then compose them")

    def save(self, directory) -> None:
        raise TypeError("a composition is two checkpoints and a weight: save (or keep) each policy, and compose them "
                        "again with the weight")

    # ---- matched noise levels ---------------------------------------------------------------------
    def diffusion_level(self, t: float) -> tuple[float, float]:
        """The diffusion timestep (fractional) and its alpha_bar whose SNR equals rectified flow's at time t."""
        table = self.log_snr
        target = 2 * (math.log(t) - math.log1p(-t)) if 0 < t < 1 else (math.inf if t >= 1 else -math.inf)
        if target >= table[0]:
            tau = 0.0
        elif target <= table[-1]:
            tau = float(len(table) - 1)
        else:  # the first timestep whose log-SNR is at or below the target, then linear in log-SNR
            k = int(torch.searchsorted(-table, torch.tensor(-target, dtype=table.dtype)))
            lo, hi = float(table[k - 1]), float(table[k])
            tau = (k - 1) + (lo - target) / (lo - hi)
        k0 = int(math.floor(tau))
        k1 = min(k0 + 1, len(table) - 1)
        log_snr = float(table[k0]) + (tau - k0) * (float(table[k1]) - float(table[k0]))
        return tau, 1.0 / (1.0 + math.exp(-log_snr))

    def diffusion_x1(self, x: Tensor, t: float, cond: Tensor) -> Tensor:
        """The diffusion policy's denoised chunk at rectified-flow state x, time t.

        Past the schedule's cleanest level (t above about 0.975 for 100 cosine steps) the network is asked at that
        level, and its noise estimate is applied at the true noise scale, (x - (1 - t) eps_hat) / t: read as a
        denoised chunk at the cleaner level it assumes, its estimate would pull every Euler step toward its own
        mean, by more the finer the steps.
        """
        c = self.diffusion.config
        tau, alpha_bar = self.diffusion_level(t)
        x_vp = x / math.sqrt(t * t + (1 - t) * (1 - t))
        out = self.diffusion.net(x_vp, torch.full((x.shape[0],), tau, device=x.device), cond)
        if c.prediction_type == "epsilon":
            eps, x1 = out, (x_vp - math.sqrt(1 - alpha_bar) * out) / math.sqrt(alpha_bar)
        else:
            eps, x1 = (x_vp - math.sqrt(alpha_bar) * out) / math.sqrt(1 - alpha_bar), out
        if tau == 0.0 and t > 0:
            x1 = (x - (1 - t) * eps) / t
        return x1.clamp(-c.clip_sample_range, c.clip_sample_range) if c.clip_sample else x1

    def flow_x1(self, x: Tensor, t: float, cond: Tensor) -> Tensor:
        return x + (1 - t) * self.flow.net(x, torch.full((x.shape[0],), t, device=x.device), cond)

    # ---- sampling -----------------------------------------------------------------------------------
    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None,
                         noise: Tensor | None = None) -> Tensor:
        cond_d, cond_f = self.diffusion.encoder(obs), self.flow.encoder(obs)
        shape = (cond_f.shape[0], self.config.horizon, self.config.action_dim)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x = noise.to(cond_f.device) if noise is not None else randn(shape, generator, cond_f.device)
        w, n = self.weight, self.num_inference_steps
        for k in range(n):
            t = k / n
            x1 = (1 - w) * self.flow_x1(x, t, cond_f) if w < 1 else 0.0
            if w > 0:
                x1 = x1 + w * self.diffusion_x1(x, t, cond_d)
            x = x + (x1 - x) / (n - k)  # Euler: h (x1 - x) / (1 - t) with h = 1 / n, 1 - t = (n - k) / n
        fc = self.flow.config
        return x.clamp(-fc.clip_sample_range, fc.clip_sample_range) if fc.clip_sample else x


def compose(diffusion_dir: str, flow_dir: str, weight: float, num_inference_steps: int = 10,
            n_action_steps: int | None = None) -> ComposedPolicy:
    """Load two checkpoints and compose them (what evaluation workers call)."""
    diffusion, flow = load_policy(diffusion_dir), load_policy(flow_dir)
    return ComposedPolicy(diffusion, flow, weight, num_inference_steps, n_action_steps)


__all__ = ["ComposedPolicy", "compose"]
