"""Diffusion Policy hyper-parameters (Chi et al., RSS 2023), sized by default for a CPU budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig
from robopolicy.policies.networks.unet1d import ACTIVATIONS as UNET_ACTIVATIONS

SAMPLING_MODES = ("standard", "warm_start", "streaming")  # see fast_sampling.py
SCHEDULERS = ("DDPM", "DDIM", "DPMSolver++", "UniPC")


@dataclass
class DiffusionConfig(PolicyConfig):
    type: str = "diffusion"
    # Network. The paper's low-dim UNet is (256, 512, 1024), ~66 M parameters, far too slow to
    # train in an hour on two CPU cores; see docs/benchmarks.md for the size that is.
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    n_groups: int = 8
    # Residual blocks per U-Net level (down, middle, up); Diffusion Policy has 2. One halves the operators per
    # step, which is what sets batch-1 latency on a CPU.
    blocks_per_level: int = 2
    # U-Net activation: mish (Diffusion Policy) | silu (one fused operator in ONNX Runtime: faster batch-1 export).
    activation: str = "mish"
    step_embed_dim: int = 128
    # Training noise schedule (DDPM, as in the paper).
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    # Sampling.
    noise_scheduler_type: str = "DDIM"
    num_inference_steps: int = 10
    # ---- camera encoder and fast sampling (encoders.py, fast_sampling.py) ----
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    # standard | warm_start (previous chunk, shifted, denoised from mid-schedule) | streaming
    # (rolling buffer with a noise ramp; needs per_position_noise).
    sampling_mode: str = "standard"
    warm_start_fraction: float = 0.5  # share of num_inference_steps a warm start runs (and its noise level)
    streaming_steps: int = 1  # network evaluations per streaming call
    per_position_noise: bool = False  # train with a noise level per chunk position (needed by streaming)
    # ---- end of camera encoder and fast sampling options ----

    def __post_init__(self) -> None:
        super().__post_init__()
        # ---- camera encoder and fast sampling ----
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        if self.sampling_mode not in SAMPLING_MODES:
            raise ValueError(f"sampling_mode must be one of {SAMPLING_MODES}, got {self.sampling_mode!r}")
        if not 0.0 < self.warm_start_fraction <= 1.0:
            raise ValueError(f"warm_start_fraction must be in (0, 1], got {self.warm_start_fraction}")
        if self.streaming_steps < 1:
            raise ValueError(f"streaming_steps must be at least 1, got {self.streaming_steps}")
        if self.sampling_mode == "streaming" and not self.per_position_noise:
            raise ValueError("sampling_mode 'streaming' needs a network trained with per_position_noise: true")
        # ---- end ----
        if self.activation not in UNET_ACTIVATIONS:
            names = " or ".join(repr(name) for name in UNET_ACTIVATIONS)
            raise ValueError(f"activation must be {names}, got {self.activation!r}")
        if self.noise_scheduler_type not in SCHEDULERS:
            raise ValueError(f"noise_scheduler_type must be one of {SCHEDULERS}, got {self.noise_scheduler_type!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {self.num_inference_steps}")
        if self.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {self.prediction_type!r}")
        if self.horizon % (2 ** (len(self.down_dims) - 1)):
            raise ValueError(f"horizon {self.horizon} must be divisible by 2^(len(down_dims)-1) for the U-Net")
