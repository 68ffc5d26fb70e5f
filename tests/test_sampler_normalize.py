"""Window sampling at episode edges and normalization round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.data.normalize import Normalizer
from robopolicy.data.sampler import WindowSampler, window_indices


def test_windows_pad_by_repeating_episode_edges():
    # Two episodes: frames 0..4 and 5..11. T=4, To=2 (pad 1 before), Ta=3 (pad 2 after).
    w = window_indices(np.array([[0, 5], [5, 12]]), horizon=4, pad_before=1, pad_after=2)
    first, last = w[0], w[(w < 5).all(1)][-1]
    np.testing.assert_array_equal(first, [0, 0, 1, 2])  # starts one frame before the episode
    np.testing.assert_array_equal(last, [3, 4, 4, 4])  # runs two frames past its end
    # Episode 0 has starts -1..3 (5 windows); episode 1 has 5-1 .. 12-4+2 = 4..10 (7 windows).
    assert len(w) == 5 + 7
    np.testing.assert_array_equal(w[5], [5, 5, 6, 7])
    np.testing.assert_array_equal(w[-1], [10, 11, 11, 11])
    # No window mixes frames of the two episodes.
    assert all((row < 5).all() or (row >= 5).all() for row in w)


def test_short_episode_still_yields_a_window():
    w = window_indices(np.array([[0, 2]]), horizon=8, pad_before=1, pad_after=0)
    assert len(w) == 1
    np.testing.assert_array_equal(w[0], [0, 0, 1, 1, 1, 1, 1, 1])


def test_sampler_batches_cut_observations_to_to():
    n = 20
    data = {"obs": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), "act": torch.arange(n, dtype=torch.float32)[:, None]}
    s = WindowSampler(data, np.array([[0, 8], [8, 20]]), ["obs"], "act", n_obs_steps=2, horizon=6, n_action_steps=3)
    batch = s.get(torch.tensor([0, len(s) - 1]))
    assert batch["obs"].shape == (2, 2, 3) and batch["act"].shape == (2, 6, 1)
    np.testing.assert_array_equal(batch["obs"][0, :, 0], [0, 0])
    np.testing.assert_array_equal(batch["act"][0, :, 0], [0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(batch["act"][1, :, 0], [16, 17, 18, 19, 19, 19])  # last start = 20 - 6 + 2
    g = torch.Generator().manual_seed(0)
    assert s.sample(16, g)["act"].shape == (16, 6, 1)


def test_sampler_rejects_inconsistent_horizons():
    with pytest.raises(ValueError, match="n_obs_steps"):
        WindowSampler({"o": torch.zeros(3, 1), "a": torch.zeros(3, 1)}, np.array([[0, 3]]), ["o"], "a", 5, 4, 1)


def _stats(x: np.ndarray) -> dict:
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}


@pytest.mark.parametrize("mode", ["min_max", "mean_std"])
def test_normalization_round_trip(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(500, 4)).astype(np.float32)
    x[:, 3] = 7.0  # a constant dimension must not divide by zero
    norm = Normalizer({"f": _stats(x)}, {"f": mode})
    t = torch.from_numpy(x)
    y = norm.normalize("f", t)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(norm.unnormalize("f", y), t, atol=1e-4, rtol=1e-5)
    if mode == "min_max":
        torch.testing.assert_close(y[:, :3].min(0).values, torch.full((3,), -1.0))
        torch.testing.assert_close(y[:, :3].max(0).values, torch.full((3,), 1.0))
    else:
        torch.testing.assert_close(y[:, :3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(y[:, :3].std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert torch.all(y[:, 3] == 0)
    # Serialized and rebuilt, it normalizes identically.
    again = Normalizer.from_dict(norm.to_dict())
    torch.testing.assert_close(again.normalize("f", t), y)


def test_normalizer_errors():
    with pytest.raises(ValueError, match="must be one of"):
        Normalizer({"f": {"min": [0], "max": [1]}}, {"f": "minmax"})
    with pytest.raises(KeyError, match="no statistics for feature 'g'"):
        Normalizer({"f": {"min": [0], "max": [1]}}, {"g": "min_max"})
    with pytest.raises(KeyError, match=r"lack \['std'\]"):
        Normalizer({"f": {"mean": [0]}}, {"f": "mean_std"})


def test_final_approach_weights_draw_near_goal_windows_as_often_as_asked():
    """Windows whose current frame (the last observed one) has reward >= threshold get the weight; the draw follows."""
    n = 40
    reward = np.zeros(n, dtype=np.float32)
    reward[30:] = 0.9  # the last 10 frames of the second episode are "near the goal"
    data = {"obs": torch.arange(n, dtype=torch.float32)[:, None], "act": torch.zeros(n, 1)}
    s = WindowSampler(data, np.array([[0, 20], [20, 40]]), ["obs"], "act", n_obs_steps=2, horizon=6, n_action_steps=3)
    uniform = s.draw_ids(4000, torch.Generator().manual_seed(0))
    s.weigh(reward[:, None], threshold=0.8, weight=5.0)
    current = s.windows[:, 1]
    near = current >= 30
    np.testing.assert_array_equal(s.window_weights.numpy(), np.where(near.numpy(), 5.0, 1.0))
    drawn = s.draw_ids(20000, torch.Generator().manual_seed(0))
    expected = 5 * near.sum().item() / (5 * near.sum().item() + (~near).sum().item())
    assert abs(near[drawn].float().mean().item() - expected) < 0.02
    assert near[uniform].float().mean().item() < 0.35 < expected  # uniform draws see them at their share
    batch = s.sample(512, torch.Generator().manual_seed(1))
    assert abs((batch["obs"][:, 1, 0] >= 30).float().mean().item() - expected) < 0.07  # the gathered windows too
    s.weigh(reward, threshold=0.8, weight=1.0)  # 1 = uniform again
    assert s.window_weights is None
    with pytest.raises(ValueError, match="final_approach_weight must be positive"):
        s.weigh(reward, threshold=0.8, weight=0.0)
