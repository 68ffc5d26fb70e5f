"""Streaming Flow Policy (Jiang et al., CoRL 2025): the action trajectory *is* the flow trajectory.

Instead of denoising a whole chunk, SFP learns a velocity field v(a, t | obs) over a single action
point whose flow time t in [0, 1] is execution time across the chunk. Sampling starts at the last
executed action and integrates forward; every 1 / (K - 1) of flow time the current point is the
next action, so actions stream out while integration is still running.

Chunk alignment (To = n_obs_steps, T = horizon, K = T - To + 2 knots):

    window index:   0 ... To-2   To-1   To   ...  T-1
    role:           past  anchor current next ... last
    knot (flow t):        0      1/(K-1)      ... 1

The demo trajectory xi(t) is piecewise linear through the window's actions To-2 ... T-1. Its start
xi(0) is the action executed with the previous observation, which at inference is exactly the
"last executed action" the flow starts from, and the first action the flow emits, xi(1/(K-1)),
is the one for the current observation (window index To-1), which is what the base class's
``executable_actions`` picks. ``generate_actions`` therefore returns a (B, T, A) chunk whose
positions To-1 ... T-1 hold the K-1 streamed actions and whose positions 0 ... To-2 repeat the
start action (the past; nothing there is predicted or executed).

Variants (from the reference equations; eps, z0 ~ N(0, I)):
  SFP-D  x = xi(t) + sigma0 e^{-kt} eps,   target xi'(t) - k (x - xi(t))
  SFP-S  a = xi(t) + sigma0 e^{-kt} eps + sigma_r t z0,  z = (1 - (1 - sigma1) t) z0 + t xi(t)
         targets v_a = xi'(t) - k sigma0 e^{-kt} eps + sigma_r z0,  v_z = xi(t) + t xi'(t) - (1 - sigma1) z0
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import Policy
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.flow.integrators import VelocityField, nfe, trajectory
from robopolicy.policies.networks.film_mlp import VelocityMLP
from robopolicy.policies.noise import rand, randn
from robopolicy.policies.registry import register_policy
from robopolicy.policies.sfp.configuration import SFPConfig


@register_policy("sfp")
class StreamingFlowPolicy(Policy):
    config_class = SFPConfig

    def __init__(self, config: SFPConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.config: SFPConfig = config
        self.encoder = make_observation_encoder(config.input_features, config.n_obs_steps, config.image_encoder)
        self.net = VelocityMLP(
            state_dim=self.state_dim,
            obs_dim=self.encoder.output_dim,
            hidden_dim=config.hidden_dim,
            n_layers=config.n_layers,
            time_embed_dim=config.time_embed_dim,
            timestep_scale=config.timestep_scale,
        )
        # The last executed action in robot units, (B, A): where the next chunk's flow starts.
        # select_action and stream_actions update it; reset() forgets it.
        self.last_action: Tensor | None = None

    @property
    def stochastic(self) -> bool:
        return self.config.variant == "stochastic"

    @property
    def state_dim(self) -> int:
        """Dimension of the integrated state: a, or (a, z) for SFP-S."""
        return self.config.action_dim * (2 if self.stochastic else 1)

    @property
    def nfe_per_action(self) -> int:
        """Network evaluations between two streamed actions (the first action's cost)."""
        return nfe(self.config.integrator, self.config.integration_steps_per_action)

    @property
    def nfe(self) -> int:
        """Network evaluations for a whole chunk of K - 1 streamed actions."""
        return (self.config.n_knots - 1) * self.nfe_per_action

    def set_sampler(self, kind: str | None = None, num_inference_steps: int | None = None) -> None:
        """Switch integrator (``kind``) or integration steps *per action* of a trained policy.

        Same signature as the other families', so ``robopolicy eval`` sampler overrides work.
        """
        if kind is not None:
            self.config.integrator = kind
        if num_inference_steps is not None:
            self.config.integration_steps_per_action = num_inference_steps
        self.config.__post_init__()

    def reset(self) -> None:
        super().reset()
        self.last_action = None

    # ---- training -------------------------------------------------------------------------------
    def demo_trajectory(self, actions: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """xi(t) and its slope xi'(t), (B, M, A), from window actions (B, T, A) at flow times t (B, M).

        Knots are the actions To-2 ... T-1 at flow times i / (K - 1); xi is linear between knots and
        xi' is the slope of the segment t lies in (t = 1 belongs to the last segment).
        """
        knots = actions[:, self.config.n_obs_steps - 2 :]
        K, A = knots.shape[1], knots.shape[2]
        s = t * (K - 1)
        i = s.floor().long().clamp(0, K - 2)
        frac = (s - i).unsqueeze(-1)
        left = knots.gather(1, i.unsqueeze(-1).expand(-1, -1, A))
        right = knots.gather(1, (i + 1).unsqueeze(-1).expand(-1, -1, A))
        return left + frac * (right - left), (right - left) * (K - 1)

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        c = self.config
        actions = batch[self.action_key]
        B, M, A, device = actions.shape[0], c.t_samples_per_chunk, c.action_dim, actions.device
        obs_embedding = self.net.embed_obs(self.encoder(batch, generator=generator))
        # Stratified flow times: one in each of M equal slices of [0, 1], so every chunk is covered.
        t = (torch.arange(M, device=device) + rand((B, M), generator, device)) / M
        xi, xi_dot = self.demo_trajectory(actions, t)
        tt = t.unsqueeze(-1)
        decay = torch.exp(-c.k * tt)
        eps = randn((B, M, A), generator, device)
        if not self.stochastic:
            x = xi + c.sigma0 * decay * eps
            target = xi_dot - c.k * (x - xi)
        else:
            z0 = randn((B, M, A), generator, device)
            a = xi + c.sigma0 * decay * eps + c.sigma_r * tt * z0
            z = (1 - (1 - c.sigma1) * tt) * z0 + tt * xi
            v_a = xi_dot - c.k * c.sigma0 * decay * eps + c.sigma_r * z0
            v_z = xi + tt * xi_dot - (1 - c.sigma1) * z0
            x, target = torch.cat([a, z], dim=-1), torch.cat([v_a, v_z], dim=-1)
        pred = self.net(x.flatten(0, 1), t.flatten(), obs_embedding.repeat_interleave(M, dim=0))
        return F.mse_loss(pred, target.flatten(0, 1))

    # ---- streaming inference ---------------------------------------------------------------------
    def velocity_field(self, obs_embedding: Tensor) -> VelocityField:
        """v(x, t) for one batch of observation embeddings (what the integrator, and export, call)."""

        def v(x: Tensor, t: float) -> Tensor:
            return self.net(x, torch.full((x.shape[0],), t, device=x.device), obs_embedding)

        return v

    def start_action(self, obs: dict[str, Tensor]) -> Tensor:
        """Normalized (B, A) start of the flow, from a normalized observation history.

        The last executed action when there is one for this batch size; else, at episode start, the
        robot's position from ``start_from_observation_key`` (robot units, re-normalized as an
        action); else the center of the action range (normalized 0).
        """
        c = self.config
        first = obs[c.input_features[0].key]
        B, device = first.shape[0], first.device
        if self.last_action is not None and self.last_action.shape[0] == B:
            return self.normalizer.normalize(self.action_key, self.last_action.to(device))
        key = c.start_from_observation_key
        if key is not None:
            position = self.normalizer.unnormalize(key, obs[key][:, -1]).reshape(B, c.action_dim)
            return self.normalizer.normalize(self.action_key, position)
        return torch.zeros(B, c.action_dim, device=device)

    def _stream(self, obs: dict[str, Tensor], generator: torch.Generator | None = None, noise: Tensor | None = None,
                start: Tensor | None = None, n_actions: int | None = None) -> Iterator[Tensor]:
        """Normalized actions (B, A), one per 1 / (K - 1) of flow time, from a normalized history."""
        c = self.config
        K, A = c.n_knots, c.action_dim
        n_actions = K - 1 if n_actions is None else n_actions
        if not 1 <= n_actions <= K - 1:
            raise ValueError(f"n_actions must be in [1, {K - 1}], got {n_actions}")
        obs_embedding = self.net.embed_obs(self.encoder(obs))
        B, device = obs_embedding.shape[0], obs_embedding.device
        a0 = self.start_action(obs) if start is None else start.to(device).reshape(B, A)
        if noise is None:
            noise = randn((B, self.state_dim), generator, device)  # [eps, z0] for SFP-S
        elif tuple(noise.shape) != (B, self.state_dim):
            raise ValueError(f"noise must have shape {(B, self.state_dim)} ([eps{', z0' if self.stochastic else ''}]), "
                             f"got {tuple(noise.shape)}")
        noise = noise.to(device)
        x = a0 + c.sigma0 * noise[:, :A]
        if self.stochastic:
            x = torch.cat([x, noise[:, A:]], dim=-1)
        steps = c.integration_steps_per_action
        flow = trajectory(self.velocity_field(obs_embedding), x, c.integrator, n_actions * steps, 0.0,
                          n_actions / (K - 1))
        for i, (_, x) in enumerate(flow):
            if (i + 1) % steps == 0:
                yield x[:, :A]

    @torch.no_grad()
    def stream_actions(self, obs_history: dict[str, Any], generator: torch.Generator | None = None,
                       noise: Tensor | None = None, n_actions: int | None = None) -> Iterator[Tensor]:
        """Yield each action (B, A) in robot units as soon as the flow reaches it.

        ``obs_history`` is {key: (B, To, ...)} in robot units. The first action is the one for the
        latest observation; at most K - 1 = T - To + 1 actions follow (``n_actions`` stops earlier
        and saves the rest of the integration). Each yielded action is taken as executed: it
        becomes ``last_action``, where the next chunk's flow starts.
        """
        obs = {f.key: self.normalizer.normalize(f.key, torch.as_tensor(obs_history[f.key], dtype=torch.float32,
                                                                        device=self.device))
               for f in self.config.input_features}
        for a in self._stream(obs, generator, noise=noise, n_actions=n_actions):
            action = self.normalizer.unnormalize(self.action_key, a)
            self.last_action = action
            yield action

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None,
                         noise: Tensor | None = None) -> Tensor:
        """The stream collected into a normalized (B, T, A) chunk aligned like every other family's.

        Positions To-1 ... T-1 hold the streamed actions; positions 0 ... To-2 repeat the start action.
        """
        start = self.start_action(obs)
        streamed = list(self._stream(obs, generator, noise=noise, start=start))
        past = start.unsqueeze(1).expand(-1, self.config.n_obs_steps - 1, -1)
        return torch.cat([past, torch.stack(streamed, dim=1)], dim=1)

    def predict_executable(self, obs_history: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Only the Ta executed actions are integrated. The stream reaches them first, through the same Euler steps
        as the whole chunk, so the rest of the flow (K - 1 - Ta actions) is never computed: 4x fewer network calls
        for the quadrotor's Ta = 1 of 4, about 2x for PushT's 8 of 15."""
        obs = {f.key: self.normalizer.normalize(f.key, obs_history[f.key]) for f in self.config.input_features}
        streamed = list(self._stream(obs, generator, n_actions=self.config.n_action_steps))
        return self.normalizer.unnormalize(self.action_key, torch.stack(streamed, dim=1))

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any], generator: torch.Generator | None = None) -> np.ndarray:
        """As for every family (queue of Ta actions), and the returned action becomes ``last_action``."""
        out = super().select_action(observation, generator=generator)
        self.last_action = torch.as_tensor(out, dtype=torch.float32, device=self.device).reshape(-1, self.config.action_dim)
        return out
