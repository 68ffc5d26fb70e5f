"""Fast Diffusion Policy sampling: warm start from the previous chunk, and streaming with a noise ramp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies import load_policy
from robopolicy.policies.diffusion.fast_sampling import (
    PerPositionUnet1D,
    StreamingSampler,
    WarmStartSampler,
    shift_chunk,
)
from robopolicy.policies.networks.unet1d import ConditionalUnet1D
from robopolicy.train.trainer import make_policy_for_dataset
from tests.conftest import write_dataset

TINY = {"type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 3, "down_dims": [16, 32],
        "step_embed_dim": 16, "num_inference_steps": 10}


def tiny_policy(root: Path, **overrides):
    ds = LeRobotDataset(root)
    torch.manual_seed(0)
    return make_policy_for_dataset({**TINY, **overrides}, ds, ["observation.state"], "action", "min_max").eval()


class NetSpy:
    """Records every network evaluation's input chunk and timesteps."""

    def __init__(self, net: torch.nn.Module):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        net.register_forward_hook(lambda m, args, out: self.calls.append((args[0].clone(), torch.as_tensor(args[1]).clone())))

    def take(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        calls, self.calls = self.calls, []
        return calls


def obs(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"observation.state": torch.randn(b, 2, 2, generator=torch.Generator().manual_seed(seed))}


def test_defaults_are_the_standard_sampler(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset)
    assert policy.config.sampling_mode == "standard" and not policy.config.per_position_noise
    assert type(policy.net) is ConditionalUnet1D and policy.fast_sampler is None


def test_config_errors(lowdim_dataset):
    with pytest.raises(ValueError, match="sampling_mode must be one of"):
        tiny_policy(lowdim_dataset, sampling_mode="fast")
    with pytest.raises(ValueError, match="warm_start_fraction"):
        tiny_policy(lowdim_dataset, sampling_mode="warm_start", warm_start_fraction=0.0)
    with pytest.raises(ValueError, match="per_position_noise"):
        tiny_policy(lowdim_dataset, sampling_mode="streaming")
    with pytest.raises(ValueError, match="streaming_steps"):
        tiny_policy(lowdim_dataset, per_position_noise=True, streaming_steps=0)
    policy = tiny_policy(lowdim_dataset)
    with pytest.raises(ValueError, match="per_position_noise"):
        policy.set_sampling_mode("streaming")
    with pytest.raises(ValueError, match="unknown option"):
        policy.set_sampling_mode("warm_start", num_steps=3)


def test_shift_chunk():
    chunk = torch.arange(8.0)[None, :, None]
    assert shift_chunk(chunk, 3).flatten().tolist() == [3, 4, 5, 6, 7, 7, 7, 7]
    assert shift_chunk(chunk, 0).flatten().tolist() == list(range(8))


# ---- warm start ---------------------------------------------------------------------------------
def test_warm_start_first_call_is_the_standard_sampler(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset)
    standard = policy.generate_actions(obs(), torch.Generator().manual_seed(3))
    policy.set_sampling_mode("warm_start")
    assert isinstance(policy.fast_sampler, WarmStartSampler)
    torch.testing.assert_close(policy.generate_actions(obs(), torch.Generator().manual_seed(3)), standard, rtol=0, atol=0)


def test_warm_start_denoises_the_shifted_previous_chunk(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset, sampling_mode="warm_start", warm_start_fraction=0.5)
    spy = NetSpy(policy.net)
    first = policy.generate_actions(obs(), torch.Generator().manual_seed(0))
    assert len(spy.take()) == 10
    eps = torch.randn(first.shape, generator=torch.Generator().manual_seed(1))
    second = policy.generate_actions(obs(), noise=eps)
    calls = spy.take()
    assert len(calls) == 5  # half of num_inference_steps
    # The initial x is the previous chunk shifted by Ta, noised to the 5th-last timestep: not pure noise.
    policy.sampling_scheduler.set_timesteps(10)
    t0 = policy.sampling_scheduler.timesteps[-5]
    expected = policy.train_scheduler.add_noise(shift_chunk(first, 3), eps, t0.expand(2))
    torch.testing.assert_close(calls[0][0], expected)
    assert int(calls[0][1][0]) == int(t0) == 40
    assert not torch.allclose(calls[0][0], eps, atol=0.1)
    # A different previous chunk gives a different result; the same one the same result.
    policy.fast_sampler.previous = first
    torch.testing.assert_close(policy.generate_actions(obs(), noise=eps), second, rtol=0, atol=0)
    policy.fast_sampler.previous = first + 0.5
    assert not torch.allclose(policy.generate_actions(obs(), noise=eps), second, atol=1e-3)


@pytest.mark.parametrize("scheduler", ["DDPM", "DDIM", "DPMSolver++", "UniPC"])
def test_warm_start_with_every_scheduler(lowdim_dataset, scheduler):
    policy = tiny_policy(lowdim_dataset, sampling_mode="warm_start")
    steps = 20 if scheduler == "DDPM" else 6
    policy.set_sampler(scheduler, steps)
    spy = NetSpy(policy.net)
    g = torch.Generator().manual_seed(0)
    chunks = [policy.generate_actions(obs(), g) for _ in range(3)]
    assert len(spy.take()) == steps + 2 * (steps // 2)  # one full sampling, then two warm starts
    assert all(torch.isfinite(c).all() and c.abs().max() <= 1.0 + 1e-4 for c in chunks)


def test_warm_start_through_select_action_and_reset(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset, sampling_mode="warm_start", warm_start_fraction=0.3)
    spy = NetSpy(policy.net)
    evals = []
    g = torch.Generator().manual_seed(0)
    for _ in range(7):
        assert policy.select_action({"observation.state": np.zeros(2, np.float32)}, g).shape == (2,)
        evals.append(len(spy.take()))
    assert evals == [10, 0, 0, 3, 0, 0, 3]  # Ta = 3; warm starts run 30 % of the steps
    policy.reset()
    assert policy.fast_sampler.previous is None
    policy.select_action({"observation.state": np.zeros(2, np.float32)}, g)
    assert len(spy.take()) == 10


# ---- streaming ----------------------------------------------------------------------------------
def test_per_position_network_accepts_any_timestep_shape(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset, per_position_noise=True)
    assert isinstance(policy.net, PerPositionUnet1D)
    x, cond = torch.randn(3, 8, 2), torch.randn(3, policy.encoder.output_dim)
    a = policy.net(x, torch.tensor(37), cond)
    torch.testing.assert_close(a, policy.net(x, torch.full((3,), 37), cond))
    torch.testing.assert_close(a, policy.net(x, torch.full((3, 8), 37), cond))
    ramp = torch.arange(-1, 7)[None].expand(3, -1)
    assert not torch.allclose(a, policy.net(x, ramp, cond))
    # Training runs, backpropagates, and standard sampling still works with this network.
    batch = {**obs(4), "action": torch.randn(4, 8, 2)}
    policy.train()
    loss = policy.compute_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and policy.net.final[-1].weight.grad.abs().sum() > 0
    policy.eval()
    assert policy.generate_actions(obs()).shape == (2, 8, 2)


def test_streaming_rolls_the_buffer_one_step_per_call(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset, per_position_noise=True, sampling_mode="streaming", streaming_steps=2)
    sampler = policy.fast_sampler
    assert isinstance(sampler, StreamingSampler)
    spy = NetSpy(policy.net)
    now = policy.config.n_obs_steps - 1  # 1
    g = torch.Generator().manual_seed(0)
    chunk = policy.generate_actions(obs(), g)
    assert len(spy.take()) == 10  # first call: the standard sampler
    for _ in range(4):
        before = sampler.buffer.clone()
        new = policy.generate_actions(obs(), g)
        calls = spy.take()
        assert len(calls) == 2  # streaming_steps network evaluations per call
        x, t = calls[0]
        torch.testing.assert_close(x[:, :-1], before[:, 1:], rtol=0, atol=0)  # rolled by one, fresh noise at the end
        assert t.shape == (2, 8)
        assert (t[:, :now] == -1).all()  # the past is clean
        assert (t[:, 1:] >= t[:, :-1]).all() and (t[:, -1] == 99).all()  # noise rises to pure noise at the end
        assert (calls[-1][1][:, now] >= 0).all()  # now was still noisy before the last sub-step ...
        assert sampler.sublevels(2)[now] == 0  # ... and is clean after it
        torch.testing.assert_close(new[:, now], sampler.buffer[:, now], rtol=0, atol=0)
        # The action executed last call is now in the past, unchanged.
        torch.testing.assert_close(sampler.buffer[:, now - 1], chunk[:, now], rtol=0, atol=0)
        assert new.abs().max() <= 1.0 + 1e-6  # clipped, normalized
        chunk = new


def test_streaming_through_select_action(lowdim_dataset, tmp_path):
    policy = tiny_policy(lowdim_dataset, per_position_noise=True, sampling_mode="streaming", streaming_steps=1)
    spy = NetSpy(policy.net)
    g = torch.Generator().manual_seed(0)
    evals = []
    for _ in range(5):
        assert policy.needs_new_chunk  # one action per call, a call every step
        assert policy.select_action({"observation.state": np.zeros(2, np.float32)}, g).shape == (2,)
        evals.append(len(spy.take()))
    assert evals == [10, 1, 1, 1, 1]
    policy.reset()
    assert policy.fast_sampler.buffer is None
    policy.select_action({"observation.state": np.zeros(2, np.float32)}, g)
    assert len(spy.take()) == 10
    # Save/load keeps the mode and gives the same stream.
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert loaded.config.sampling_mode == "streaming" and isinstance(loaded.net, PerPositionUnet1D)
    for p in (policy, loaded):
        p.reset()
    a = [policy.select_action({"observation.state": np.ones(2, np.float32)}, torch.Generator().manual_seed(i)) for i in range(3)]
    b = [loaded.select_action({"observation.state": np.ones(2, np.float32)}, torch.Generator().manual_seed(i)) for i in range(3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_fast_samplers_track_a_trained_policy(tmp_path):
    """On smooth trajectories (action = next state, constant velocity), warm start and streaming
    predict the current action about as well as the standard sampler."""
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(30):
        start, v = rng.uniform(-1, 1, 2), rng.uniform(-0.05, 0.05, 2)
        states = (start + v * np.arange(31)[:, None]).astype(np.float32)
        episodes.append({"observation.state": states[:-1], "action": states[1:]})
    root = write_dataset(tmp_path / "lines", episodes)
    policy = tiny_policy(root, per_position_noise=True, down_dims=[32, 64], step_embed_dim=32).train()
    ds, c = LeRobotDataset(root), policy.config
    data = {k: policy.normalizer.normalize(k, torch.from_numpy(ds.column(k)).float()) for k in ["observation.state", "action"]}
    sampler = WindowSampler(data, ds.episode_bounds, ["observation.state"], "action", c.n_obs_steps, c.horizon, c.n_action_steps)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss = policy.compute_loss(sampler.sample(64, g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    errors = {}
    for mode in ("standard", "warm_start", "streaming"):
        policy.set_sampling_mode(mode)
        err = []
        for e in range(4):
            policy.reset()
            g = torch.Generator().manual_seed(e)
            for t in range(25):
                action = policy.select_action({"observation.state": episodes[e]["observation.state"][t]}, g)
                err.append(np.abs(action - episodes[e]["action"][t]).mean())
        errors[mode] = float(np.mean(err))
    assert errors["standard"] < 0.2, errors
    assert errors["warm_start"] < 1.5 * errors["standard"] + 0.03, errors
    assert errors["streaming"] < 1.5 * errors["standard"] + 0.03, errors
