"""Flow matching and Streaming Flow Policy: interface, integrators, streaming, chunk alignment, modes.

Everything runs on tiny networks with one thread; the multimodality checks train on tensors directly.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from robopolicy.configs import load_config
from robopolicy.data.normalize import Normalizer
from robopolicy.data.reader import LeRobotDataset
from robopolicy.policies import available_policies, load_policy
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.flow.integrators import METHODS, integrate, nfe, trajectory
from robopolicy.policies.registry import get_policy_class
from robopolicy.train.trainer import Trainer, make_policy_for_dataset
from tests.helpers import CallCounter

torch.set_num_threads(1)

SMALL = {"n_obs_steps": 2, "horizon": 8, "n_action_steps": 4}
FAMILIES = {
    "flow-unet": {"type": "flow", **SMALL, "down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16,
                  "num_inference_steps": 4},
    "flow-transformer": {"type": "flow", **SMALL, "backbone": "transformer", "n_embd": 32, "n_layer": 2, "n_head": 2,
                         "num_inference_steps": 4},
    "flow-mlp": {"type": "flow", **SMALL, "backbone": "mlp", "mlp_hidden_dim": 32, "mlp_layers": 2,
                 "step_embed_dim": 16, "num_inference_steps": 4},
    "sfp-deterministic": {"type": "sfp", **SMALL, "hidden_dim": 32, "n_layers": 2, "time_embed_dim": 16,
                          "integration_steps_per_action": 3},
    "sfp-stochastic": {"type": "sfp", **SMALL, "variant": "stochastic", "hidden_dim": 32, "n_layers": 2,
                       "time_embed_dim": 16, "integration_steps_per_action": 3},
}


def family_policy(dataset_root: Path, family: str, **overrides):
    ds = LeRobotDataset(dataset_root)
    return make_policy_for_dataset({**FAMILIES[family], **overrides}, ds, ["observation.state"], "action", "min_max")


def tensor_policy(kind: str, horizon: int = 8, n_obs_steps: int = 2, n_action_steps: int = 4, action_dim: int = 2,
                  **kw):
    """A policy on identity-normalized features, for tests that train or probe it on raw tensors."""
    cls = get_policy_class(kind)
    modes = {"observation.state": "identity", "action": "identity"}
    config = cls.config_class(n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps,
                              input_features=[FeatureSpec("observation.state", (2,))],
                              output_features=[FeatureSpec("action", (action_dim,))], normalization=modes, **kw)
    return cls(config, Normalizer({}, modes))


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the Policy interface, per family -------------------------------------------------------------
def test_registry_has_both_families():
    assert {"flow", "sfp"} <= set(available_policies())
    assert get_policy_class("flow").name == "flow" and get_policy_class("sfp").name == "sfp"


@pytest.mark.parametrize(("family", "overrides", "match"), [
    ("flow-unet", {"backbone": "rnn"}, "backbone"),
    ("flow-unet", {"integrator": "dopri5"}, "integrator"),
    ("flow-unet", {"time_sampling": "logit_normal"}, "time_sampling"),
    ("flow-unet", {"horizon": 7}, "divisible"),
    ("flow-unet", {"adaptive": True, "num_inference_steps": 1}, "adaptive"),
    ("flow-transformer", {"n_embd": 30, "n_head": 4}, "n_embd"),
    ("flow-mlp", {"mlp_layers": 0}, "mlp_layers"),
    ("sfp-deterministic", {"variant": "sde"}, "variant"),
    ("sfp-deterministic", {"n_obs_steps": 1}, "n_obs_steps >= 2"),
    ("sfp-deterministic", {"integrator": "dopri5"}, "integrator"),
    ("sfp-deterministic", {"start_from_observation_key": "observation.joints"}, "not an input feature"),
    ("sfp-stochastic", {"sigma0": 0.5, "sigma1": 0.1, "k": 0.0}, "sigma1"),
    ("sfp-stochastic", {"bogus": 1}, "unknown config fields"),
])
def test_config_errors(lowdim_dataset, family, overrides, match):
    with pytest.raises(ValueError, match=match):
        family_policy(lowdim_dataset, family, **overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_shapes_and_action_queue(lowdim_dataset, family):
    policy = family_policy(lowdim_dataset, family).eval()
    chunk = policy.predict_chunk({"observation.state": torch.randn(3, 2, 2)}, generator=g(0))
    assert chunk.shape == (3, 8, 2) and torch.isfinite(chunk).all()
    policy.reset()
    policy.predict_executable = counter = CallCounter(policy.predict_executable)
    for _ in range(6):
        assert policy.select_action({"observation.state": np.zeros(2, np.float32)}, generator=g(1)).shape == (2,)
    assert counter.calls == 2  # Ta = 4: inference at steps 0 and 4


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_and_seeds(lowdim_dataset, family, tmp_path):
    policy = family_policy(lowdim_dataset, family).eval()
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert type(loaded) is type(policy) and loaded.config == policy.config
    obs = {"observation.state": torch.randn(4, 2, 2)}
    a = policy.predict_chunk(obs, generator=g(7))
    torch.testing.assert_close(loaded.predict_chunk(obs, generator=g(7)), a, rtol=0, atol=0)
    torch.testing.assert_close(policy.predict_chunk(obs, generator=g(7)), a, rtol=0, atol=0)
    assert not torch.equal(policy.predict_chunk(obs, generator=g(8)), a)


def trainer_for(dataset_root: Path, out: Path, family: str, steps: int, **overrides) -> Trainer:
    """The CLI path: ``robopolicy train policy=<flow|sfp>`` composes configs/policy/<name>.yaml."""
    spec = {**FAMILIES[family], **overrides}
    cfg = load_config("train", [f"policy={spec.pop('type')}", f"dataset.root={dataset_root}",
                                "dataset.observation_keys=[observation.state]", f"output_dir={out}", "progress=false",
                                "num_threads=1"])
    cfg.policy = OmegaConf.merge(cfg.policy, spec)
    for k, v in {"steps": steps, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "log_every": 10,
                 "save_every": steps}.items():
        cfg[k] = v
    return Trainer(cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_falls_on_lowdim_dataset(lowdim_dataset, tmp_path, family):
    # The dataset's states are i.i.d., so only the action for the current state is predictable. SFP
    # regresses the velocity along the whole window: with T = 3 half of it (previous -> current
    # action) is learnable, with T = 8 only a seventh, too little to see in a few steps.
    overrides = {"horizon": 3, "n_action_steps": 2} if family.startswith("sfp") else {}
    torch.manual_seed(0)
    run_dir = trainer_for(lowdim_dataset, tmp_path / "run", family, steps=150, **overrides).fit()
    log = np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)
    assert log["loss"][-2:].mean() < 0.7 * log["loss"][:1].mean(), log["loss"]
    assert load_policy(run_dir / "policy").name == FAMILIES[family]["type"]


# ---- integrators ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_integrators_exact_on_constant_velocity(method):
    c = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    x0 = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    x1 = integrate(lambda x, t: c.expand_as(x), x0, method, steps=7)
    torch.testing.assert_close(x1, x0 + c)


def test_rk4_much_more_accurate_than_euler_on_exponential():
    x0 = torch.ones(1, dtype=torch.float64)
    err = {m: abs(integrate(lambda x, t: x, x0, m, steps=10).item() - math.e) for m in METHODS}
    assert err["euler"] > 0.1 and err["rk4"] < 1e-5 and err["rk4"] < 1e-4 * err["euler"]
    assert err["midpoint"] < err["euler"] / 10 and err["heun"] < err["euler"] / 10


@pytest.mark.parametrize("method", METHODS)
def test_nfe_counts_and_callback(method):
    calls, seen = 0, []

    def v(x: Tensor, t: float) -> Tensor:
        nonlocal calls
        calls += 1
        return torch.zeros_like(x)

    integrate(v, torch.zeros(2), method, steps=5, callback=lambda i, t, x: seen.append((i, t)))
    assert calls == nfe(method, 5) == {"euler": 5, "midpoint": 10, "heun": 10, "rk4": 20}[method]
    assert [i for i, _ in seen] == list(range(5)) and seen[-1][1] == 1.0
    assert [t for t, _ in trajectory(v, torch.zeros(1), method, 4, 0.0, 0.5)] == [0.125, 0.25, 0.375, 0.5]
    with pytest.raises(ValueError, match="unknown integrator"):
        nfe("dopri5", 3)


# ---- flow policy: noise input, sampler switches, adaptive steps -------------------------------------
class MixtureVelocity(nn.Module):
    """The exact rectified-flow velocity towards a mixture of fixed chunks (one chunk: a straight flow)."""

    def __init__(self, chunks: Tensor):
        super().__init__()
        self.register_buffer("chunks", chunks)  # (M, T, A)
        self.dummy = nn.Parameter(torch.zeros(()))  # the policy finds its device from a parameter

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        tt = t.reshape(-1, 1, 1, 1)
        d2 = (x[:, None] - tt * self.chunks[None]).pow(2).flatten(2).sum(-1)  # (B, M)
        w = torch.softmax(-d2 / (2 * (1 - tt.flatten(1)) ** 2), dim=1)
        x1 = torch.einsum("bm,mta->bta", w, self.chunks)
        return (x1 - x) / (1 - t.reshape(-1, 1, 1))


def test_flow_takes_its_initial_noise_and_switches_sampler():
    policy = tensor_policy("flow", down_dims=[16, 32], n_groups=4, step_embed_dim=16).eval()
    obs = {"observation.state": torch.randn(2, 2, 2)}
    noise = torch.randn(2, 8, 2)
    a = policy.generate_actions(obs, generator=g(0), noise=noise)
    torch.testing.assert_close(policy.generate_actions(obs, generator=g(1), noise=noise), a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.generate_actions(obs, noise=torch.randn(2, 4, 2))
    assert policy.nfe == 10
    policy.set_sampler("rk4", 3)
    policy.generate_actions(obs, generator=g(0))
    assert policy.nfe == 12 and policy.last_nfe.tolist() == [12, 12]
    with pytest.raises(ValueError, match="unknown integrator"):
        policy.set_sampler("dopri5")


def test_beta_time_sampling_emphasizes_the_noisy_end():
    """t = 0 is noise here, so pi0's Beta(1.5, 1) emphasis must put most training times at small t."""
    policy = tensor_policy("flow", down_dims=[16, 32], n_groups=4, step_embed_dim=16)
    t = policy.sample_time(20000, g(0), torch.device("cpu"))
    assert 0 <= t.min() and t.max() <= 0.999
    assert abs(t.mean().item() - 0.999 * (1 - 1.5 / 2.5)) < 0.01  # E[t] = s (1 - alpha / (alpha + 1))
    assert (t < 0.5).float().mean() > 0.6
    policy.config.time_sampling = "uniform"
    assert abs(policy.sample_time(20000, g(0), torch.device("cpu")).mean().item() - 0.5) < 0.01


def test_adaptive_flow_uses_fewer_nfe_when_straight():
    target = torch.linspace(-1, 1, 16).reshape(1, 8, 2)
    obs = {"observation.state": torch.zeros(64, 2, 2)}
    policy = tensor_policy("flow", adaptive=True, num_inference_steps=10, clip_sample=False).eval()
    policy.net = MixtureVelocity(target)  # one demo chunk: every flow line is straight
    chunk = policy.generate_actions(obs, generator=g(0))
    assert policy.last_nfe.tolist() == [2] * 64 and policy.nfe == 11
    torch.testing.assert_close(chunk, target.expand(64, -1, -1), atol=1e-4, rtol=0)
    policy.net = MixtureVelocity(torch.cat([target, -target]))  # two modes: the flow bends, use all steps
    chunk = policy.generate_actions(obs, generator=g(0))
    assert (policy.last_nfe == 11).float().mean() > 0.9
    score = (chunk * target).flatten(1).sum(1) / target.pow(2).sum()
    assert ((score - 1).abs() < 0.05).any() and ((score + 1).abs() < 0.05).any()
    policy.config.adaptive = False
    policy.generate_actions(obs, generator=g(0))
    assert policy.last_nfe.tolist() == [10] * 64


# ---- streaming flow policy ------------------------------------------------------------------------
class TrajectoryVelocity(nn.Module):
    """The exact SFP-D velocity around one demo, written independently of the policy's own xi(t)."""

    def __init__(self, knots: Tensor, k: float):
        super().__init__()
        self.register_buffer("knots", knots)  # (K, A) at flow times i / (K - 1)
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(()))

    def embed_obs(self, obs_vector: Tensor) -> Tensor:
        return obs_vector

    def forward(self, x: Tensor, t: Tensor, obs_embedding: Tensor) -> Tensor:
        K = len(self.knots)
        seg = torch.clamp(torch.floor(t * (K - 1) + 1e-6).long(), 0, K - 2)  # t on a knot: the next segment
        frac = (t * (K - 1) - seg)[:, None]
        left, right = self.knots[seg], self.knots[seg + 1]
        xi, xi_dot = left + frac * (right - left), (right - left) * (K - 1)
        return xi_dot - self.k * (x - xi)


def test_sfp_chunk_alignment_first_executed_action_is_the_current_one():
    """Knots are window actions To-2 ... T-1; the first executed action is window action To-1."""
    To, T = 3, 8
    window = torch.stack([torch.arange(T) * 0.1, (torch.arange(T) ** 2) * 0.02 - 0.3], dim=1)  # (T, 2), all distinct
    policy = tensor_policy("sfp", horizon=T, n_obs_steps=To, n_action_steps=3, k=2.0, sigma0=0.1,
                           integration_steps_per_action=4).eval()
    policy.net = TrajectoryVelocity(window[To - 2 :], k=2.0)
    obs = {"observation.state": torch.zeros(1, To, 2)}
    # Training targets agree with the trajectory through window[To-2:], so the exact field has zero loss.
    assert policy.compute_loss({**obs, "action": window[None]}, generator=g(0)) < 1e-8
    policy.config.sigma0 = 0.0  # start exactly on the demo: the flow then retraces it
    policy.last_action = window[To - 2][None]  # executed with the previous observation
    chunk = policy.predict_chunk(obs, generator=g(0))
    torch.testing.assert_close(chunk[0, To - 1 :], window[To - 1 :], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunk[0, : To - 1], window[To - 2].expand(To - 1, -1), atol=0, rtol=0)
    first = next(policy.stream_actions(obs, generator=g(0)))
    torch.testing.assert_close(first[0], window[To - 1], atol=1e-5, rtol=0)
    # select_action executes window[To-1], window[To], ... and each becomes the flow's next start.
    policy.reset()
    policy.last_action = window[To - 2][None]
    executed = [policy.select_action({"observation.state": np.zeros(2, np.float32)}, generator=g(0)) for _ in range(3)]
    np.testing.assert_allclose(np.stack(executed), window[To - 1 : To + 2].numpy(), atol=1e-5)
    torch.testing.assert_close(policy.last_action, window[To + 1][None], atol=1e-5, rtol=0)
    policy.reset()
    assert policy.last_action is None


@pytest.mark.parametrize(("steps", "stable"), [(3, False), (6, True)])
def test_sfp_warns_when_euler_amplifies_the_stabilizing_term(steps, stable):
    """k * dt > 2 makes Euler overshoot the demo by more than the start error; the config says so."""
    To, T, k = 2, 5, 30.0  # K - 1 = 4 actions, dt = 1 / (4 * steps): k dt = 2.5 (3 steps) or 1.25 (6 steps)
    window = torch.zeros(T, 2)  # the demo holds still at 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = tensor_policy("sfp", horizon=T, n_obs_steps=To, n_action_steps=1, k=k, sigma0=0.0,
                               integration_steps_per_action=steps).eval()
    assert any("k * dt" in str(w.message) for w in caught) == (not stable)
    policy.net = TrajectoryVelocity(window[To - 2 :], k=k)
    policy.last_action = torch.tensor([[0.3, -0.3]])  # executed off the demo
    first = next(policy.stream_actions({"observation.state": torch.zeros(1, To, 2)}))
    shrink = first.abs().max().item() / 0.3
    assert shrink > 1.0 if not stable else shrink < 0.2


def test_sfp_start_action_priority(lowdim_dataset):
    policy = family_policy(lowdim_dataset, "sfp-deterministic", start_from_observation_key="observation.state").eval()
    state = torch.tensor([[0.3, -0.2]])
    obs = {"observation.state": policy.normalizer.normalize("observation.state", state[:, None].expand(1, 2, 2))}
    expected = policy.normalizer.normalize("action", state)  # the robot's position, as an action
    torch.testing.assert_close(policy.start_action(obs), expected)
    policy.last_action = torch.tensor([[0.5, 0.5]])
    torch.testing.assert_close(policy.start_action(obs), policy.normalizer.normalize("action", policy.last_action))
    fallback = family_policy(lowdim_dataset, "sfp-deterministic").eval()
    assert torch.equal(fallback.start_action(obs), torch.zeros(1, 2))


@pytest.mark.parametrize("variant", ["deterministic", "stochastic"])
@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_sfp_streams_first_action_before_the_rest(variant, integrator):
    """The first action comes out after one action's worth of integration, not a whole chunk's."""
    policy = tensor_policy("sfp", horizon=16, n_action_steps=8, variant=variant, integrator=integrator,
                           integration_steps_per_action=6, hidden_dim=32, n_layers=1).eval()
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    policy.net.register_forward_hook(count)
    stream = policy.stream_actions({"observation.state": torch.zeros(1, 2, 2)}, generator=g(0))
    first = next(stream)
    assert first.shape == (1, 2)
    assert calls == policy.nfe_per_action == 6 * {"euler": 1, "rk4": 4}[integrator]
    rest = list(stream)
    assert len(rest) == 14 and calls == policy.nfe == 15 * policy.nfe_per_action
    torch.testing.assert_close(policy.last_action, rest[-1])
    calls = 0
    assert len(list(policy.stream_actions({"observation.state": torch.zeros(1, 2, 2)}, n_actions=3))) == 3
    assert calls == 3 * policy.nfe_per_action
    policy.set_sampler("midpoint", 2)  # robopolicy eval's sampler override: steps per action here
    assert policy.nfe_per_action == 4


# ---- multimodality --------------------------------------------------------------------------------
MODE = torch.linspace(0, 1, 8)[:, None] * torch.tensor([0.8, -0.4])  # (T, A): a ramp away from a common start


def two_mode_batch(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Same observation; the action chunk ramps to +MODE or -MODE with equal probability."""
    sign = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    return {"observation.state": torch.zeros(n, 2, 2), "action": sign[:, None, None] * MODE}


def train_on_tensors(policy, steps: int, batch_size: int = 128, lr: float = 3e-3, one_mode: bool = False):
    torch.manual_seed(0)
    gen = g(0)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    for _ in range(steps):
        batch = two_mode_batch(batch_size, gen)
        if one_mode:
            batch["action"] = batch["action"].abs() * MODE.sign()
        loss = policy.compute_loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


def assert_both_modes(chunks: Tensor) -> None:
    score = (chunks * MODE).flatten(1).sum(1) / MODE.pow(2).sum()  # +1 / -1 on the modes, 0 between
    pos, neg, mid = (score > 0.5).float().mean(), (score < -0.5).float().mean(), (score.abs() < 0.3).float().mean()
    assert pos >= 0.25 and neg >= 0.25 and mid <= 0.1, (pos, neg, mid)


def small_flow(**kw):
    return tensor_policy("flow", backbone="transformer", n_embd=32, n_layer=2, n_head=2, clip_sample=False, **kw)


def test_flow_samples_both_modes_and_adapts_its_steps():
    torch.manual_seed(0)
    policy = train_on_tensors(small_flow(adaptive_threshold=0.03), steps=250)
    obs = {"observation.state": torch.zeros(200, 2, 2)}
    assert_both_modes(policy.predict_chunk(obs, generator=g(1)))
    # Two modes bend the flow: the adaptive sampler takes all steps (and still finds both modes).
    policy.set_sampler("euler", 10)
    policy.config.adaptive = True
    chunks = policy.predict_chunk(obs, generator=g(1))
    assert_both_modes(chunks)
    assert (policy.last_nfe == 11).float().mean() > 0.8
    # One mode: the learned flow is straight, so most chunks take the 2-evaluation shortcut.
    # (Undertrained models: their velocity changes by ~0.005 on one mode against ~0.4 on two.)
    torch.manual_seed(0)
    straight = train_on_tensors(small_flow(adaptive=True, adaptive_threshold=0.03), steps=250, one_mode=True)
    chunks = straight.predict_chunk(obs, generator=g(1))
    assert straight.last_nfe.float().mean() < 4 < straight.nfe
    assert (chunks - MODE).abs().mean() < 0.05


def test_stochastic_sfp_samples_both_modes():
    torch.manual_seed(0)
    policy = train_on_tensors(tensor_policy("sfp", variant="stochastic", hidden_dim=64, n_layers=2), steps=250)
    chunks = policy.predict_chunk({"observation.state": torch.zeros(200, 2, 2)}, generator=g(1))  # starts at 0
    assert_both_modes(chunks)


@pytest.mark.parametrize("kind", ["flow", "sfp"])
def test_camera_features_train_and_round_trip(kind, tmp_path):
    modes = {"observation.state": "identity", "observation.image": "identity", "action": "identity"}
    cls = get_policy_class(kind)
    small = {"flow": {"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16}, "sfp": {"hidden_dim": 32}}[kind]
    config = cls.config_class(horizon=8, n_action_steps=4, normalization=modes,
                              input_features=[FeatureSpec("observation.state", (2,)),
                                              FeatureSpec("observation.image", (32, 32, 3))],
                              output_features=[FeatureSpec("action", (2,))],
                              image_encoder={"crop_shape": [28, 28], "width": 8, "num_keypoints": 8, "feature_dim": 16},
                              **small)
    policy = cls(config, Normalizer({}, modes))
    obs = {"observation.state": torch.randn(3, 2, 2),
           "observation.image": torch.randint(0, 256, (3, 2, 32, 32, 3), dtype=torch.uint8)}
    policy.compute_loss({**obs, "action": torch.randn(3, 8, 2)}, generator=g(0)).backward()
    policy.eval().save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    torch.testing.assert_close(loaded.predict_chunk(obs, generator=g(1)), policy.predict_chunk(obs, generator=g(1)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["deterministic", "stochastic"])
@pytest.mark.parametrize("ta", [1, 4])
def test_sfp_select_action_integrates_only_the_executed_actions(variant, ta):
    """select_action executes the whole chunk's first Ta actions, computed through the first Ta of K - 1 actions'
    integration only (same Euler steps, same noise): the quadrotor's Ta = 1 of 4 costs a quarter of the calls."""
    policy = tensor_policy("sfp", horizon=5, n_obs_steps=2, n_action_steps=ta, variant=variant, k=2.0,
                           integration_steps_per_action=3, hidden_dim=32, n_layers=1).eval()
    history = {"observation.state": torch.randn(3, 2, 2, generator=g(1))}
    policy.last_action = torch.randn(3, 2, generator=g(2))
    chunk = policy.executable_actions(policy.predict_chunk(history, generator=g(0)))
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    policy.net.register_forward_hook(count)
    executed = policy.predict_executable(history, generator=g(0))
    assert calls == ta * policy.nfe_per_action and policy.nfe == 4 * policy.nfe_per_action
    torch.testing.assert_close(executed, chunk, atol=1e-6, rtol=0)
    policy.reset()
    policy.last_action = torch.randn(3, 2, generator=g(2))
    actions = [policy.select_action({"observation.state": history["observation.state"][:, -1].numpy()}, generator=g(0))
               for _ in range(ta)]
    assert calls == 2 * ta * policy.nfe_per_action  # one chunk for Ta steps
    np.testing.assert_allclose(actions[-1], policy.last_action.numpy(), atol=0)
