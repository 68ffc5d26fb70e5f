"""Observation encoders shared by every policy family.

An encoder turns a normalized observation history {key: (B, To, *shape)} into one conditioning
vector (B, output_dim): per time step, the features are concatenated (low-dim values as they are,
each camera as a small feature vector), and the To steps are flattened (Diffusion Policy's global
conditioning). Token-based families (ACT) read the same features one token per feature and time
step through :meth:`ObservationEncoder.feature_tokens`.

Camera convention: a camera feature has shape (H, W, C), channel-last, as LeRobot datasets and the
PushT env store it, and carries raw pixel values in [0, 255] (uint8, or float from the env loop).
Its normalizer mode is ``identity``; the encoder itself crops, scales to [0, 1] and normalizes per
channel with the dataset's image statistics (see :func:`set_image_stats`; until they are set, a
fixed (x - 0.5) / 0.5). Keeping uint8 frames until the batch is drawn keeps a whole PushT dataset
at 0.7 GB instead of 2.8 GB of float.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.policies.base import FeatureSpec


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImageEncoderConfig:
    """Options of the camera encoder, the ``image_encoder`` field of a family's config.

    Ignored by policies without camera features.
    """

    # (height, width) of the crop fed to the CNN: random in training, centred in eval. None = no crop.
    crop_shape: list[int] | None = dataclasses.field(default_factory=lambda: [84, 84])
    random_crop: bool = True
    # Channels of the first ResNet stage (the four stages have w, 2w, 4w, 8w). ResNet-18 has 64;
    # 32 costs a quarter of the compute, which is what a CPU can train in an hour.
    width: int = 32
    num_keypoints: int = 32  # spatial-softmax keypoints (each gives an expected (x, y))
    feature_dim: int = 64  # per-camera, per-time-step feature vector
    shared: bool = False  # one CNN for all cameras (they must have the same shape)

    def __post_init__(self) -> None:
        if self.crop_shape is not None:
            self.crop_shape = [int(s) for s in self.crop_shape]
            if len(self.crop_shape) != 2 or min(self.crop_shape) < 1:
                raise ValueError(f"image_encoder.crop_shape must be [height, width] or null, got {self.crop_shape}")
        if self.width < 8:
            raise ValueError(f"image_encoder.width must be at least 8, got {self.width}")
        if self.num_keypoints < 1 or self.feature_dim < 1:
            raise ValueError(
                f"image_encoder.num_keypoints and feature_dim must be positive, got {self.num_keypoints}, {self.feature_dim}"
            )

    @classmethod
    def coerce(cls, value: ImageEncoderConfig | dict[str, Any] | None) -> ImageEncoderConfig:
        """From a config mapping (JSON, Hydra) with a clear error for misspelt options."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"image_encoder: unknown options {sorted(unknown)} (known: {sorted(known)})")
        return cls(**value)


def is_camera(feature: FeatureSpec) -> bool:
    return len(feature.shape) == 3


def _module_name(key: str) -> str:
    """nn.ModuleDict keys cannot contain dots; feature keys do (``observation.image``)."""
    return key.replace(".", "__")


# ---------------------------------------------------------------------------------------------
# Low-dimensional features
# ---------------------------------------------------------------------------------------------
class LowDimEncoder(nn.Module):
    """Flattens and concatenates vector features: (B, To, D1), (B, To, D2) -> (B, To * (D1 + D2))."""

    def __init__(self, features: list[FeatureSpec], n_obs_steps: int):
        super().__init__()
        for f in features:
            if len(f.shape) != 1:
                raise ValueError(f"LowDimEncoder takes vector features; {f.key!r} has shape {f.shape}")
        self.keys = [f.key for f in features]
        self.token_dims = {f.key: f.shape[0] for f in features}
        self.output_dim = n_obs_steps * sum(math.prod(f.shape) for f in features)

    def feature_tokens(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {k: obs[k] for k in self.keys}

    def forward(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        x = torch.cat([obs[k] for k in self.keys], dim=-1)  # (B, To, D)
        return x.flatten(1)


# ---------------------------------------------------------------------------------------------
# Camera encoder: crop + normalize -> ResNet-18-style CNN (GroupNorm) -> spatial softmax -> linear
# ---------------------------------------------------------------------------------------------
def spatial_softargmax(maps: Tensor) -> Tensor:
    """Expected (x, y) of each map under a softmax over its pixels: (N, K, H, W) -> (N, K, 2).

    Coordinates span [-1, 1]: x = -1 is the left column, y = -1 the top row. A soft arg-max keeps
    *where* things are, which is what manipulation needs, and is differentiable.
    """
    n, k, h, w = maps.shape
    attention = F.softmax(maps.flatten(2), dim=-1).view(n, k, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=maps.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=maps.dtype)
    x = (attention.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows, then expectation over columns
    y = (attention.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


class SpatialSoftmax(nn.Module):
    """Learned 1x1 conv to K keypoint maps, then their soft arg-max: (N, C, H, W) -> (N, 2K)."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.keypoint_maps = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        self.output_dim = 2 * num_keypoints

    def forward(self, features: Tensor) -> Tensor:
        return spatial_softargmax(self.keypoint_maps(features)).flatten(1)


def _group_norm(channels: int) -> nn.GroupNorm:
    # Diffusion Policy's choice: 16 channels per group. BatchNorm misbehaves with EMA weights and
    # the small, correlated batches of behaviour cloning.
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a (projected when the shape changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          _group_norm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (stem + 4 stages of 2 BasicBlocks) without the pooling/classifier head."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                  _group_norm(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        stages, c = [], width
        for i, out in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c, out, stride), BasicBlock(out, out)]
            c = out
        self.stages = nn.Sequential(*stages)
        self.out_channels = c

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class ImageFeatures(nn.Module):
    """Normalized image (N, C, h, w) -> keypoint feature vector (N, feature_dim)."""

    def __init__(self, in_channels: int, cfg: ImageEncoderConfig):
        super().__init__()
        self.backbone = ResNet18(in_channels, cfg.width)
        self.keypoints = SpatialSoftmax(self.backbone.out_channels, cfg.num_keypoints)
        self.out = nn.Linear(self.keypoints.output_dim, cfg.feature_dim)
        self.output_dim = cfg.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.keypoints(self.backbone(x)))


class ImagePreprocess(nn.Module):
    """Raw frames (N, H, W, C) in [0, 255] -> cropped, normalized float (N, C, h, w).

    The per-channel mean/std are buffers (saved with the weights), so a checkpoint carries the
    statistics it was trained with.
    """

    def __init__(self, feature: FeatureSpec, cfg: ImageEncoderConfig):
        super().__init__()
        h, w, c = feature.shape
        self.key = feature.key
        crop = cfg.crop_shape
        if crop is not None and (crop[0] > h or crop[1] > w):
            raise ValueError(f"image_encoder.crop_shape {crop} is larger than camera {feature.key!r} ({h}x{w})")
        self.image_shape = (h, w, c)
        self.crop_shape = tuple(crop) if crop is not None else (h, w)
        self.random_crop = cfg.random_crop
        self.register_buffer("mean", torch.full((c, 1, 1), 0.5))
        self.register_buffer("std", torch.full((c, 1, 1), 0.5))

    def crop(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random crop per image in training, centre crop in eval; works on uint8 (cheap)."""
        n, h, w, _ = x.shape
        ch, cw = self.crop_shape
        if (ch, cw) == (h, w):
            return x
        if self.training and self.random_crop:
            top = torch.randint(0, h - ch + 1, (n,), generator=generator).to(x.device)
            left = torch.randint(0, w - cw + 1, (n,), generator=generator).to(x.device)
            rows = top[:, None] + torch.arange(ch, device=x.device)  # (N, ch)
            cols = left[:, None] + torch.arange(cw, device=x.device)  # (N, cw)
            return x[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, top : top + ch, left : left + cw]

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"camera {self.key!r}: expected frames of shape (N, {', '.join(map(str, self.image_shape))}) "
                f"(channel-last, pixel values 0..255), got {tuple(x.shape)}"
            )
        x = self.crop(x, generator)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std


# ---------------------------------------------------------------------------------------------
# The encoder every family uses
# ---------------------------------------------------------------------------------------------
class ObservationEncoder(nn.Module):
    """Low-dim and camera features -> one conditioning vector, or one token per feature and step.

    ``output_dim`` = To * (sum of low-dim sizes + feature_dim per camera). With low-dim features only
    it computes exactly what :class:`LowDimEncoder` does and holds no parameters.
    """

    def __init__(self, features: list[FeatureSpec], n_obs_steps: int,
                 image_config: ImageEncoderConfig | dict[str, Any] | None = None):
        super().__init__()
        cfg = ImageEncoderConfig.coerce(image_config)
        self.keys = [f.key for f in features]
        self.camera_keys = [f.key for f in features if is_camera(f)]
        self.lowdim_keys = [f.key for f in features if not is_camera(f)]
        for f in features:
            if len(f.shape) not in (1, 3):
                raise ValueError(f"observation {f.key!r}: shape {f.shape} is neither a vector nor an (H, W, C) image")
            if is_camera(f) and f.shape[-1] not in (1, 3, 4):
                raise ValueError(f"camera {f.key!r}: shape {f.shape} is not (H, W, C) channel-last")
        self.preprocess = nn.ModuleDict()
        self.image_nets = nn.ModuleDict()
        cameras = [f for f in features if is_camera(f)]
        if cfg.shared and len({f.shape for f in cameras}) > 1:
            raise ValueError(f"image_encoder.shared needs cameras of one shape, got {[(f.key, f.shape) for f in cameras]}")
        for f in cameras:
            self.preprocess[_module_name(f.key)] = ImagePreprocess(f, cfg)
            if not cfg.shared:
                self.image_nets[_module_name(f.key)] = ImageFeatures(f.shape[-1], cfg)
        if cfg.shared and cameras:
            self.image_nets["shared"] = ImageFeatures(cameras[0].shape[-1], cfg)
        self.shared = cfg.shared
        self.token_dims = {f.key: (cfg.feature_dim if is_camera(f) else f.shape[0]) for f in features}
        self.output_dim = n_obs_steps * sum(self.token_dims.values())

    def encode_camera(self, key: str, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, To, H, W, C) frames -> (B, To, feature_dim)."""
        if frames.ndim != 5:
            raise ValueError(f"camera {key!r}: expected (B, To, H, W, C) frames, got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        x = self.preprocess[_module_name(key)](frames.flatten(0, 1), generator)
        net = self.image_nets["shared" if self.shared else _module_name(key)]
        return net(x).view(b, t, -1)

    def feature_tokens(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """{key: (B, To, token_dims[key])}, in feature order: one token per feature and time step."""
        return {k: self.encode_camera(k, obs[k], generator) if k in self.camera_keys else obs[k] for k in self.keys}

    def forward(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        tokens = self.feature_tokens(obs, generator)
        return torch.cat(list(tokens.values()), dim=-1).flatten(1)  # (B, To * sum(token_dims))


def make_observation_encoder(features: list[FeatureSpec], n_obs_steps: int,
                             image_config: ImageEncoderConfig | dict[str, Any] | None = None) -> ObservationEncoder:
    """The encoder for a policy's input features (vectors and (H, W, C) cameras)."""
    return ObservationEncoder(features, n_obs_steps, image_config)


def set_image_stats(module: nn.Module, stats: dict[str, dict[str, Any]]) -> list[str]:
    """Copy per-channel image mean/std (shaped (C, 1, 1), for pixels in [0, 1]) into every camera
    preprocessor of ``module`` (a policy or an encoder). Returns the camera keys it set.

    Call once after building a policy from a dataset; the values are then saved with the weights.
    """
    done = []
    for sub in module.modules():
        if isinstance(sub, ImagePreprocess) and sub.key in stats:
            c = sub.mean.shape[0]
            mean = torch.as_tensor(np.asarray(stats[sub.key]["mean"], dtype=np.float32)).reshape(c, 1, 1)
            std = torch.as_tensor(np.asarray(stats[sub.key]["std"], dtype=np.float32)).reshape(c, 1, 1)
            sub.mean.copy_(mean)
            sub.std.copy_(std.clamp_min(1e-3))  # a constant channel must not blow up
            done.append(sub.key)
    return done


__all__ = [
    "ImageEncoderConfig",
    "LowDimEncoder",
    "ObservationEncoder",
    "ResNet18",
    "SpatialSoftmax",
    "is_camera",
    "make_observation_encoder",
    "set_image_stats",
    "spatial_softargmax",
]
