"""Observation encoders: low-dim compatibility, the camera CNN, spatial softmax, crops, image policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.data.normalize import Normalizer
from robopolicy.policies import load_policy
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.encoders import (
    ImageEncoderConfig,
    LowDimEncoder,
    SpatialSoftmax,
    make_observation_encoder,
    set_image_stats,
    spatial_softargmax,
)
from robopolicy.policies.registry import get_policy_class

STATE = FeatureSpec("observation.state", (2,))
IMAGE = FeatureSpec("observation.image", (32, 40, 3))
ACTION = FeatureSpec("action", (2,))
SMALL = {"crop_shape": [28, 36], "width": 8, "num_keypoints": 4, "feature_dim": 16}


def frames(b: int, t: int, h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, h, w, 3), generator=g, dtype=torch.uint8)


def test_lowdim_only_is_unchanged_and_parameter_free():
    features = [STATE, FeatureSpec("observation.environment_state", (16,))]
    enc = make_observation_encoder(features, n_obs_steps=2)
    old = LowDimEncoder(features, n_obs_steps=2)
    obs = {"observation.state": torch.randn(5, 2, 2), "observation.environment_state": torch.randn(5, 2, 16)}
    assert enc.output_dim == old.output_dim == 36
    torch.testing.assert_close(enc(obs), old(obs), rtol=0, atol=0)
    assert not list(enc.parameters()) and not list(enc.buffers())  # old checkpoints load unchanged
    tokens = enc.feature_tokens(obs)
    assert list(tokens) == ["observation.state", "observation.environment_state"]
    assert tokens["observation.environment_state"].shape == (5, 2, 16)


def test_image_encoder_shapes_and_tokens():
    enc = make_observation_encoder([STATE, IMAGE], n_obs_steps=2, image_config=SMALL)
    obs = {"observation.state": torch.randn(3, 2, 2), "observation.image": frames(3, 2)}
    assert enc.output_dim == 2 * (2 + 16)
    assert enc(obs).shape == (3, 36)
    assert enc.token_dims == {"observation.state": 2, "observation.image": 16}
    tokens = enc.feature_tokens(obs)
    assert tokens["observation.image"].shape == (3, 2, 16) and tokens["observation.state"].shape == (3, 2, 2)
    # Per time step: [state, image features], then the steps flattened (global conditioning).
    enc.eval()
    flat = enc(obs)
    tokens = enc.feature_tokens(obs)
    torch.testing.assert_close(flat, torch.cat([tokens["observation.state"], tokens["observation.image"]], -1).flatten(1))


def test_camera_convention_errors():
    with pytest.raises(ValueError, match="channel-last"):
        make_observation_encoder([FeatureSpec("cam", (3, 32, 40))], 1)
    with pytest.raises(ValueError, match="larger than camera"):
        make_observation_encoder([IMAGE], 1, {"crop_shape": [64, 64]})
    with pytest.raises(ValueError, match="unknown options"):
        ImageEncoderConfig.coerce({"num_keypoint": 3})
    enc = make_observation_encoder([IMAGE], 1, SMALL)
    with pytest.raises(ValueError, match=r"channel-last, pixel values 0\.\.255"):
        enc({"observation.image": frames(1, 1).permute(0, 1, 4, 2, 3)})


def test_spatial_softargmax_finds_the_peak():
    h, w = 8, 10
    maps = torch.zeros(2, 3, h, w)
    peaks = [[(3, 6), (0, 0), (7, 9)], [(4, 1), (2, 8), (5, 5)]]  # (row, col)
    for n, per_map in enumerate(peaks):
        for k, (r, c) in enumerate(per_map):
            maps[n, k, r, c] = 50.0
    xy = spatial_softargmax(maps)
    xs, ys = torch.linspace(-1, 1, w), torch.linspace(-1, 1, h)
    expected = torch.tensor([[[xs[c], ys[r]] for r, c in per_map] for per_map in peaks])
    torch.testing.assert_close(xy, expected, atol=1e-4, rtol=0)
    # A flat map's expectation is the centre.
    torch.testing.assert_close(spatial_softargmax(torch.zeros(1, 1, h, w)), torch.zeros(1, 1, 2), atol=1e-6, rtol=0)
    assert SpatialSoftmax(16, 5)(torch.randn(2, 16, 4, 4)).shape == (2, 10)


def test_random_crop_in_training_centre_crop_in_eval():
    enc = make_observation_encoder([IMAGE], 1, SMALL)
    pre = enc.preprocess["observation__image"]
    x = frames(6, 1).flatten(0, 1)
    pre.train()
    a = pre.crop(x, torch.Generator().manual_seed(0))
    b = pre.crop(x, torch.Generator().manual_seed(1))
    assert a.shape == (6, 28, 36, 3) and not torch.equal(a, b)
    torch.testing.assert_close(a, pre.crop(x, torch.Generator().manual_seed(0)), rtol=0, atol=0)  # seeded
    # Each crop is a window of its own image.
    for i in range(6):
        found = any(torch.equal(a[i], x[i, r : r + 28, c : c + 36]) for r in range(5) for c in range(5))
        assert found
    pre.eval()
    centre = x[:, 2:30, 2:38]
    torch.testing.assert_close(pre.crop(x, torch.Generator().manual_seed(0)), centre, rtol=0, atol=0)
    enc.eval()
    obs = {"observation.image": frames(2, 1)}
    torch.testing.assert_close(enc(obs), enc(obs), rtol=0, atol=0)
    # uint8 and float pixel values (the env loop hands floats) give the same features.
    torch.testing.assert_close(enc(obs), enc({"observation.image": obs["observation.image"].float()}))


def test_gradients_reach_every_camera_parameter():
    enc = make_observation_encoder([STATE, IMAGE], 2, SMALL)
    obs = {"observation.state": torch.randn(4, 2, 2), "observation.image": frames(4, 2)}
    enc(obs).pow(2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_shared_and_per_camera_backbones():
    cams = [FeatureSpec("cam.left", (32, 40, 3)), FeatureSpec("cam.right", (32, 40, 3))]
    per = make_observation_encoder(cams, 1, SMALL)
    shared = make_observation_encoder(cams, 1, {**SMALL, "shared": True})
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(per) == 2 * n(shared)
    obs = {"cam.left": frames(2, 1, seed=1), "cam.right": frames(2, 1, seed=2)}
    assert shared(obs).shape == per(obs).shape == (2, 32)
    with pytest.raises(ValueError, match="one shape"):
        make_observation_encoder([cams[0], FeatureSpec("cam.small", (24, 40, 3))], 1, {**SMALL, "shared": True})


def test_image_stats_are_used_and_saved():
    enc = make_observation_encoder([IMAGE], 1, SMALL).eval()
    obs = {"observation.image": frames(2, 1)}
    before = enc(obs)
    stats = {"observation.image": {"mean": np.full((3, 1, 1), 0.9), "std": np.full((3, 1, 1), 0.1)}}
    assert set_image_stats(enc, stats) == ["observation.image"]
    assert not torch.allclose(before, enc(obs))
    sd = enc.state_dict()
    torch.testing.assert_close(sd["preprocess.observation__image.mean"], torch.full((3, 1, 1), 0.9))


@pytest.mark.parametrize("family", ["mlp", "diffusion", "act"])
def test_tiny_image_policy_trains_and_round_trips(tmp_path, family):
    """Images as raw uint8 with an identity normalizer, the action = where a bright square is."""
    extra = {"mlp": {"hidden_dims": [64]},
             "diffusion": {"down_dims": [16, 32], "step_embed_dim": 16, "num_inference_steps": 4},
             "act": {"dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 1,
                     "n_vae_encoder_layers": 1, "latent_dim": 4, "dropout": 0.0}}[family]
    cls = get_policy_class(family)
    config = cls.config_class.from_dict({
        "type": family, "n_obs_steps": 1, "horizon": 4, "n_action_steps": 2, "image_encoder": SMALL, **extra,
        "input_features": [STATE.to_dict(), IMAGE.to_dict()], "output_features": [ACTION.to_dict()],
        "normalization": {"observation.state": "min_max", "observation.image": "identity", "action": "min_max"},
    })
    unit = {"min": [-1.0, -1.0], "max": [1.0, 1.0]}
    normalizer = Normalizer({"observation.state": unit, "action": unit}, config.normalization)
    torch.manual_seed(0)
    policy = cls(config, normalizer)
    set_image_stats(policy, {"observation.image": {"mean": np.full((3, 1, 1), 0.1), "std": np.full((3, 1, 1), 0.3)}})

    g = torch.Generator().manual_seed(0)

    def batch(b: int = 16) -> dict[str, torch.Tensor]:
        pos = torch.randint(4, 28, (b, 2), generator=g)
        img = torch.zeros(b, 1, 32, 40, 3, dtype=torch.uint8)
        for i, (r, c) in enumerate(pos.tolist()):
            img[i, 0, r - 3 : r + 3, c - 3 : c + 3] = 255
        target = (pos.float() / 16 - 1)[:, None].expand(b, 4, 2)
        return {"observation.state": torch.zeros(b, 1, 2), "observation.image": img, "action": target.contiguous()}

    held_out = batch(64)

    @torch.no_grad()
    def held_out_loss() -> float:  # same batch, same noise: comparable before and after
        policy.eval()
        return policy.compute_loss(held_out, torch.Generator().manual_seed(123)).item()

    before = held_out_loss()
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(15):
        policy.train()
        loss = policy.compute_loss(batch(), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert np.isfinite(loss.item())
    after = held_out_loss()
    assert after < before, (before, after)

    policy.eval()
    env_obs = {"observation.state": np.zeros(2, np.float32), "observation.image": batch(1)["observation.image"][0, 0].numpy()}
    assert policy.select_action(env_obs, generator=torch.Generator().manual_seed(0)).shape == (2,)
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    torch.testing.assert_close(loaded.encoder.preprocess["observation__image"].mean, torch.full((3, 1, 1), 0.1))
    obs = {k: v for k, v in batch(3).items() if k != "action"}
    torch.testing.assert_close(policy.predict_chunk(obs, torch.Generator().manual_seed(0)),
                               loaded.predict_chunk(obs, torch.Generator().manual_seed(0)), rtol=0, atol=0)
