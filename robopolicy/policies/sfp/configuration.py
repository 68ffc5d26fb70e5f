"""Streaming Flow Policy hyper-parameters (Jiang et al., CoRL 2025).

Flow time t in [0, 1] is execution time: the flow starts at the last executed action and passes
through the next action every 1 / (K - 1) of flow time, where the K knots are the window's actions
from index To - 2 (the action executed with the previous observation) to T - 1. With the published
PushT setting (To = 2, T = 16) that is the whole window, K = T = 16, knots at i / 15.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig
from robopolicy.policies.flow.integrators import METHODS

VARIANTS = ("deterministic", "stochastic")
# Largest k * dt for which each explicit integrator damps the stabilizing term -k (x - xi) instead of
# amplifying it (stability interval of the method on the real axis).
STABLE_K_DT = {"euler": 2.0, "midpoint": 2.0, "heun": 2.0, "rk4": 2.785}


@dataclass
class SFPConfig(PolicyConfig):
    type: str = "sfp"
    variant: str = "deterministic"  # deterministic (SFP-D) | stochastic (SFP-S, latent z)
    k: float = 2.0  # stabilizing gain: deviations from the demo decay as e^{-kt}
    sigma0: float = 0.1  # noise around the start action
    sigma1: float = 0.1  # SFP-S: spread of the latent z at t = 1
    # Velocity network: a small residual MLP with FiLM from (observations, t).
    hidden_dim: int = 256
    n_layers: int = 3
    time_embed_dim: int = 64
    timestep_scale: float = 100.0  # t in [0, 1] is scaled before the sinusoidal embedding
    # Training: flow times drawn per demo chunk (stratified over [0, 1]), so each chunk is used well.
    t_samples_per_chunk: int = 8
    # Inference.
    integration_steps_per_action: int = 6
    integrator: str = "euler"  # euler | midpoint | heun | rk4
    # Observation feature that holds the robot's own position in action space (PushT:
    # observation.state, the agent position), used as the start at episode start. Without one,
    # the first chunk of an episode starts from the center of the action range (normalized 0)
    # and relies on the stabilizing term to converge onto a demonstrated trajectory.
    start_from_observation_key: str | None = None
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # cameras only

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.n_obs_steps < 2:
            raise ValueError(
                f"sfp needs n_obs_steps >= 2 (got {self.n_obs_steps}): its flow starts at the action executed "
                "with the previous observation, window index To - 2")
        if self.horizon < self.n_obs_steps:
            raise ValueError(f"horizon (T={self.horizon}) must be >= n_obs_steps (To={self.n_obs_steps})")
        if self.k < 0 or self.sigma0 < 0 or self.sigma1 < 0:
            raise ValueError(f"k, sigma0 and sigma1 must be >= 0, got {self.k}, {self.sigma0}, {self.sigma1}")
        if self.variant == "stochastic" and self.sigma1**2 < self.sigma0**2 * math.exp(-2 * self.k):
            raise ValueError(
                f"stochastic sfp needs sigma1^2 >= sigma0^2 e^(-2k) (sigma_r is their difference's root); got "
                f"sigma0={self.sigma0}, sigma1={self.sigma1}, k={self.k}")
        if self.integrator not in METHODS:
            raise ValueError(f"integrator must be one of {METHODS}, got {self.integrator!r}")
        for name in ("integration_steps_per_action", "t_samples_per_chunk", "hidden_dim", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {self.time_embed_dim}")
        if self.k * self.integration_dt > STABLE_K_DT[self.integrator]:
            warnings.warn(
                f"sfp: k * dt = {self.k * self.integration_dt:.2f} exceeds {STABLE_K_DT[self.integrator]} for "
                f"{self.integrator}, so integration amplifies deviations from the demo instead of damping them; "
                f"raise integration_steps_per_action above {self.k / ((self.n_knots - 1) * STABLE_K_DT[self.integrator]):.1f} "
                "or lower k (k * dt = 1 with Euler lands back on the trajectory in one step)", stacklevel=2)
        if self.start_from_observation_key is not None and self.input_features:
            features = {f.key: f for f in self.input_features}
            f = features.get(self.start_from_observation_key)
            if f is None:
                raise ValueError(f"start_from_observation_key {self.start_from_observation_key!r} is not an input "
                                 f"feature (have {sorted(features)})")
            if math.prod(f.shape) != self.action_dim:
                raise ValueError(f"start_from_observation_key {f.key!r} has shape {f.shape}, but actions have "
                                 f"{self.action_dim} dims: it must be the robot's position in action space")

    @property
    def n_knots(self) -> int:
        """K: knots of the demo trajectory, window actions To - 2 ... T - 1."""
        return self.horizon - self.n_obs_steps + 2

    @property
    def integration_dt(self) -> float:
        """Flow time per integration step: 1 / ((K - 1) * integration_steps_per_action)."""
        return 1.0 / ((self.n_knots - 1) * self.integration_steps_per_action)

    @property
    def sigma_r(self) -> float:
        """SFP-S: rate of the latent's contribution to a, sqrt(sigma1^2 - sigma0^2 e^(-2k))."""
        return math.sqrt(max(self.sigma1**2 - self.sigma0**2 * math.exp(-2 * self.k), 0.0))
