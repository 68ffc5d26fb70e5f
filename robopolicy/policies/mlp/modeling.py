"""MLP behaviour cloning: flattened To observations -> a (T, A) action chunk, trained with MSE (or L1).

The deterministic baseline: with multimodal demonstrations (go left or right around an obstacle)
MSE regression predicts the mean of the modes, which diffusion and flow policies avoid. Its layout
is a plain ``nn.Sequential`` of Linear and activation layers, easy to export to C.

With ``latent_dim > 0`` training is a CVAE's (ACT's recipe on an MLP): a posterior MLP sees the
observation features and the demonstrated chunk and gives z, which is projected onto the first
hidden layer's pre-activation. Inference uses the prior's mean z = 0, where that term vanishes, so
``net`` alone is the deployed policy and the exporters need not know about the latent.

With ``n_hypotheses = K > 1`` the last layer gives K scores followed by K candidate chunks, trained and
chosen between as in :mod:`robopolicy.policies.hypotheses` (the C exporter knows this layout).

With ``ensemble = K > 1`` K members with the same layout train side by side (batched matmuls), each on its own
loss from its own initialization, and the policy acts with their mean. ``net`` is then that mean written as one
plain MLP (first layer stacked, inner layers block-diagonal, last layer averaged), built from the members on
demand, so every exporter sees the usual ``nn.Sequential``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import Policy
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.hypotheses import best_hypothesis, winner_takes_all_loss
from robopolicy.policies.mlp.configuration import MLPConfig
from robopolicy.policies.registry import register_policy

ACTIVATION_LAYERS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def make_mlp(in_dim: int, hidden_dims: list[int], out_dim: int, activation: str = "relu",
             layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers.append(nn.Linear(in_dim, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(ACTIVATION_LAYERS[activation]())
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class StackedMLP(nn.Module):
    """K MLPs of one layout as stacked weights (K, out, in): one batched matmul per layer for all members."""

    def __init__(self, members: list[nn.Sequential]):
        super().__init__()
        linears = [[m for m in member if isinstance(m, nn.Linear)] for member in members]
        self.activations = nn.ModuleList(m for m in members[0] if not isinstance(m, nn.Linear))
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([ls[i].weight.detach() for ls in linears]))
                                        for i in range(len(linears[0])))
        self.biases = nn.ParameterList(nn.Parameter(torch.stack([ls[i].bias.detach() for ls in linears]))
                                       for i in range(len(linears[0])))

    def forward(self, x: Tensor) -> Tensor:
        """(B, in) -> (K, B, out): every member's output."""
        h = x.unsqueeze(0).expand(len(self.weights[0]), *x.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(self.activations):
                h = self.activations[i](h)
        return h

    def merged(self) -> nn.Sequential:
        """The members' mean as one plain MLP: exact for elementwise activations."""
        k = len(self.weights[0])
        layers: list[nn.Module] = []
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            w, b = w.detach(), b.detach()
            if n == 1:
                weight, bias = w.mean(0), b.mean(0)
            elif i == 0:
                weight, bias = w.reshape(-1, w.shape[-1]), b.reshape(-1)
            elif i == n - 1:
                weight, bias = torch.cat(list(w), dim=1) / k, b.mean(0)
            else:
                weight, bias = torch.block_diag(*w), b.reshape(-1)
            linear = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device, weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            layers.append(linear)
            if i < len(self.activations):
                layers.append(type(self.activations[i])())
        return nn.Sequential(*layers)


@register_policy("mlp")
class MLPPolicy(Policy):
    config_class = MLPConfig

    def __init__(self, config: MLPConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.config: MLPConfig = config
        self.encoder = make_observation_encoder(config.input_features, config.n_obs_steps, config.image_encoder)
        self.chunk_size = config.horizon * config.action_dim
        k = config.n_hypotheses
        out_dim = self.chunk_size if k == 1 else k + k * self.chunk_size
        if config.ensemble > 1:
            self.members = StackedMLP([make_mlp(self.encoder.output_dim, config.hidden_dims, out_dim, config.activation)
                                       for _ in range(config.ensemble)])
        else:
            self.net = make_mlp(self.encoder.output_dim, config.hidden_dims, out_dim, config.activation,
                                config.layer_norm)
        if config.latent_dim > 0:
            width = config.hidden_dims[0]
            self.posterior = make_mlp(self.encoder.output_dim + self.chunk_size, [width, width],
                                      2 * config.latent_dim, config.activation)
            self.latent_to_hidden = nn.Linear(config.latent_dim, width, bias=False)

    @property
    def net(self) -> nn.Sequential:
        """The deployed network (for an ensemble, a fresh merged copy: see :meth:`deployable`). A property on the
        class; ``self.net = ...`` in ``__init__`` still registers the single MLP, since nn.Module stores modules
        without calling the descriptor."""
        if self.config.ensemble > 1:
            return self.members.merged()
        return self._modules["net"]

    def deployable(self) -> MLPPolicy:
        """An ensemble as one plain MLP policy (hidden widths x K, block-diagonal), acting as the ensemble does;
        exporters read and may temporarily alter (int8 references) its ``net``, which must persist."""
        if self.config.ensemble == 1:
            return self
        merged = self.members.merged()
        widths = [m.out_features for m in merged if isinstance(m, nn.Linear)][:-1]
        single = MLPPolicy(dataclasses.replace(self.config, ensemble=1, hidden_dims=widths), self.normalizer)
        single.net.load_state_dict(merged.state_dict())
        single.encoder = self.encoder
        return single.to(next(self.parameters()).device).train(self.training)

    def hypotheses(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(scores (B, K), candidate chunks (B, K, T, A)) for n_hypotheses = K > 1."""
        c = self.config
        out = self.net(self.encoder(obs, generator=generator))
        scores, chunks = out.split([c.n_hypotheses, c.n_hypotheses * self.chunk_size], dim=-1)
        return scores, chunks.reshape(-1, c.n_hypotheses, c.horizon, c.action_dim)

    def _predict(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        c = self.config
        if c.ensemble > 1:
            return self.members(self.encoder(obs, generator=generator)).mean(0).view(-1, c.horizon, c.action_dim)
        if c.n_hypotheses == 1:
            return self.net(self.encoder(obs, generator=generator)).view(-1, c.horizon, c.action_dim)
        return best_hypothesis(*self.hypotheses(obs, generator))

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        c = self.config
        actions = batch[self.action_key]
        if c.n_hypotheses > 1:
            return winner_takes_all_loss(*self.hypotheses(batch, generator), actions, c.loss, c.wta_epsilon,
                                         c.score_weight)
        loss = F.l1_loss if c.loss == "l1" else F.mse_loss
        if c.ensemble > 1:  # each member on its own loss (the mean of the members' losses), not the mean's loss
            outputs = self.members(self.encoder(batch, generator=generator))
            return loss(outputs, actions.flatten(1).unsqueeze(0).expand_as(outputs))
        if c.latent_dim == 0:
            return loss(self._predict(batch, generator), actions)
        features = self.encoder(batch, generator=generator)
        mu, log_var = self.posterior(torch.cat([features, actions.flatten(1)], dim=-1)).chunk(2, dim=-1)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + (0.5 * log_var).exp() * eps
        kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).sum(-1).mean()
        hidden = self.net[0](features) + self.latent_to_hidden(z)
        chunk = self.net[1:](hidden).view_as(actions)
        return loss(chunk, actions) + c.kl_weight * kl

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        return self._predict(obs)
