"""Flow-matching policy hyper-parameters (rectified flow over action chunks).

Time convention: t = 0 is pure noise, t = 1 is the demonstrated chunk (x_t = (1 - t) x0 + t x1),
and sampling integrates from 0 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from robopolicy.policies.chunk_backbone import ChunkBackboneConfig
from robopolicy.policies.flow.integrators import METHODS

TIME_SAMPLINGS = ("uniform", "beta")


@dataclass
class FlowConfig(ChunkBackboneConfig):
    type: str = "flow"
    # Training times. "beta" follows pi0: t = s * (1 - u), u ~ Beta(alpha, 1), which puts more
    # samples at small t (the noisy end in our convention) where the velocity is hardest to learn.
    time_sampling: str = "beta"  # uniform | beta
    time_beta_alpha: float = 1.5
    time_beta_s: float = 0.999
    # Sampling.
    integrator: str = "euler"  # euler | midpoint | heun | rk4
    num_inference_steps: int = 10
    clip_sample: bool = True  # clamp the final chunk to the normalized action range
    clip_sample_range: float = 1.0
    # AdaFlow-style adaptive sampling: one Euler probe step from t = 0 to adaptive_probe_t measures
    # how much the velocity changes (mean squared, normalized units); chunks whose flow is straight
    # (change < adaptive_threshold) finish with one more Euler step, the others run all the steps.
    # Calibrate the threshold on validation data with FlowPolicy.last_velocity_change.
    adaptive: bool = False
    adaptive_threshold: float = 1e-2
    adaptive_probe_t: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}")
        if self.time_beta_alpha <= 0 or not 0 < self.time_beta_s <= 1:
            raise ValueError(f"need time_beta_alpha > 0 and 0 < time_beta_s <= 1, got "
                             f"{self.time_beta_alpha} and {self.time_beta_s}")
        if self.integrator not in METHODS:
            raise ValueError(f"integrator must be one of {METHODS}, got {self.integrator!r}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.adaptive and self.num_inference_steps < 2:
            raise ValueError("adaptive sampling needs num_inference_steps >= 2 (the first step is the probe)")
        if not 0 < self.adaptive_probe_t < 1:
            raise ValueError(f"adaptive_probe_t must be in (0, 1), got {self.adaptive_probe_t}")
        if self.adaptive_threshold < 0:
            raise ValueError(f"adaptive_threshold must be >= 0, got {self.adaptive_threshold}")
