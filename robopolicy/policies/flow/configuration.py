"""Flow-matching policy hyper-parameters (rectified flow over action chunks).

Time convention: t = 0 is pure noise, t = 1 is the demonstrated chunk (x_t = (1 - t) x0 + t x1),
and sampling integrates from 0 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig
from robopolicy.policies.flow.integrators import METHODS
from robopolicy.policies.networks.unet1d import ACTIVATIONS as UNET_ACTIVATIONS

BACKBONES = ("unet", "transformer", "mlp")
TIME_SAMPLINGS = ("uniform", "beta")


@dataclass
class FlowConfig(PolicyConfig):
    type: str = "flow"
    backbone: str = "unet"  # unet | transformer | mlp
    # U-Net backbone (same sizes as the diffusion family, for like-for-like comparisons).
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    n_groups: int = 8
    # Residual blocks per U-Net level (down, middle, up); Diffusion Policy has 2. One halves the operators per
    # step, which is what sets batch-1 latency on a CPU.
    blocks_per_level: int = 2
    # U-Net activation: mish (Diffusion Policy) | silu (one fused operator in ONNX Runtime: faster batch-1 export).
    activation: str = "mish"
    step_embed_dim: int = 128
    # t in [0, 1] is multiplied by this before the sinusoidal embedding, so that the embedding
    # varies over the unit interval as much as it does over diffusion's 100 integer timesteps.
    timestep_scale: float = 100.0
    # Transformer backbone (one token per chunk timestep, adaLN conditioning).
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    # MLP backbone (the chunk flattened to one vector, FiLM residual blocks; time embedding of
    # step_embed_dim): for short chunks of low-dimensional actions, e.g. a quadrotor's motor commands.
    mlp_hidden_dim: int = 256
    mlp_layers: int = 3
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
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # cameras only

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.activation not in UNET_ACTIVATIONS:
            names = " or ".join(repr(name) for name in UNET_ACTIVATIONS)
            raise ValueError(f"activation must be {names}, got {self.activation!r}")
        if self.backbone == "unet" and self.horizon % (2 ** (len(self.down_dims) - 1)):
            raise ValueError(f"horizon {self.horizon} must be divisible by 2^(len(down_dims)-1) for the U-Net")
        if self.backbone == "transformer" and (self.n_embd % self.n_head or self.n_embd % 2):
            raise ValueError(f"n_embd ({self.n_embd}) must be even and divisible by n_head ({self.n_head})")
        if self.backbone == "mlp" and (self.mlp_hidden_dim < 1 or self.mlp_layers < 1):
            raise ValueError(f"mlp backbone needs mlp_hidden_dim >= 1 and mlp_layers >= 1, got "
                             f"{self.mlp_hidden_dim} and {self.mlp_layers}")
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
