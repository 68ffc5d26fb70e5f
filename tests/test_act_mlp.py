"""ACT and MLP behaviour cloning: shapes, save/load, seeds, learning, temporal ensembling, mode averaging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies import load_policy
from robopolicy.policies.act.modeling import TemporalEnsembler
from robopolicy.policies.registry import get_policy_class
from robopolicy.train.trainer import make_policy_for_dataset
from tests.conftest import write_dataset
from tests.helpers import CallCounter

TINY = {
    "act": {"type": "act", "n_obs_steps": 1, "chunk_size": 4, "n_action_steps": 2, "dim_model": 32, "n_heads": 4,
            "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_vae_encoder_layers": 1,
            "latent_dim": 8, "dropout": 0.0, "kl_weight": 1.0},
    "mlp": {"type": "mlp", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "hidden_dims": [64, 64]},
}
FAMILIES = list(TINY)


def tiny_policy(root: Path, family: str, **overrides):
    ds = LeRobotDataset(root)
    return make_policy_for_dataset({**TINY[family], **overrides}, ds, ["observation.state"], "action", "min_max")


def train(policy, root: Path, steps: int, lr: float = 3e-3, batch_size: int = 64, seed: int = 0) -> list[float]:
    """A bare training loop over in-memory windows (the trainer's sampling, without its bookkeeping)."""
    ds = LeRobotDataset(root)
    c = policy.config
    keys = [f.key for f in c.input_features]
    data = {k: policy.normalizer.normalize(k, torch.from_numpy(ds.column(k)).float()) for k in [*keys, policy.action_key]}
    sampler = WindowSampler(data, ds.episode_bounds, keys, policy.action_key, c.n_obs_steps, c.horizon, c.n_action_steps)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    policy.train()
    losses = []
    for _ in range(steps):
        loss = policy.compute_loss(sampler.sample(batch_size, g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    policy.eval()
    return losses


# ---- both families ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_registry_and_config_errors(lowdim_dataset, family):
    assert get_policy_class(family).name == family
    with pytest.raises(ValueError, match="unknown config fields"):
        tiny_policy(lowdim_dataset, family, bogus=1)
    with pytest.raises(ValueError, match="image_encoder: unknown options"):
        tiny_policy(lowdim_dataset, family, image_encoder={"widht": 16})
    bad = {"act": {"dim_model": 30}, "mlp": {"activation": "gelu"}}[family]
    with pytest.raises(ValueError, match="dim_model|activation"):
        tiny_policy(lowdim_dataset, family, **bad)


def test_act_chunk_size_is_the_horizon(lowdim_dataset):
    assert tiny_policy(lowdim_dataset, "act", chunk_size=6).config.horizon == 6
    assert tiny_policy(lowdim_dataset, "act", chunk_size=None, horizon=6).config.chunk_size == 6
    with pytest.raises(ValueError, match="chunk_size .* is the horizon"):
        tiny_policy(lowdim_dataset, "act", chunk_size=6, horizon=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_action_queue(lowdim_dataset, family):
    policy = tiny_policy(lowdim_dataset, family).eval()
    chunk = policy.predict_chunk({"observation.state": torch.zeros(3, policy.config.n_obs_steps, 2)})
    assert chunk.shape == (3, 4, 2) and torch.isfinite(chunk).all()
    policy.generate_actions = counter = CallCounter(policy.generate_actions)
    for _ in range(5):
        assert policy.select_action({"observation.state": np.zeros(2, np.float32)}).shape == (2,)
    assert counter.calls == 3  # Ta = 2: a new chunk at steps 0, 2, 4
    policy.reset()
    assert policy.select_action({"observation.state": np.zeros((4, 2), np.float32)}).shape == (4, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_gives_identical_actions(lowdim_dataset, tmp_path, family):
    policy = tiny_policy(lowdim_dataset, family)
    train(policy, lowdim_dataset, steps=3)
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert type(loaded) is type(policy) and loaded.config == policy.config
    obs = {"observation.state": torch.randn(4, policy.config.n_obs_steps, 2)}
    torch.testing.assert_close(policy.predict_chunk(obs), loaded.predict_chunk(obs), rtol=0, atol=0)


def test_execution_horizon_override_for_eval_and_export(lowdim_dataset, tmp_path):
    """`eval n_action_steps=` / `export n_action_steps=` run a trained policy with another Ta, same network."""
    from robopolicy.cli import cmd_export, load_policy_for_eval
    from robopolicy.configs import load_config

    policy = tiny_policy(lowdim_dataset, "act")  # chunk 4, trained Ta 2
    policy.save(tmp_path / "p")
    longer = load_policy_for_eval(str(tmp_path / "p"), None, None, n_action_steps=4)
    assert longer.config.n_action_steps == 4 and load_policy(tmp_path / "p").config.n_action_steps == 2
    longer.generate_actions = counter = CallCounter(longer.generate_actions)
    for _ in range(8):
        longer.select_action({"observation.state": np.zeros(2, np.float32)})
    assert counter.calls == 2  # Ta = 4: a new chunk at steps 0 and 4
    obs = {"observation.state": torch.randn(2, 1, 2)}
    torch.testing.assert_close(longer.predict_chunk(obs), policy.eval().predict_chunk(obs), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"n_action_steps=5 does not fit the policy at .*p: .*at most horizon"):
        load_policy_for_eval(str(tmp_path / "p"), None, None, n_action_steps=5)
    artifact = cmd_export(load_config("export", [f"checkpoint={tmp_path / 'p'}", f"output={tmp_path / 'onnx'}",
                                                 "graph_kinds=[per_step]", "n_action_steps=3"]))
    assert json.loads((artifact / "manifest.json").read_text())["n_action_steps"] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_seeds(lowdim_dataset, family):
    """Same seed, same weights and loss; inference is deterministic (ACT samples z = 0)."""
    torch.manual_seed(0)
    a = tiny_policy(lowdim_dataset, family)
    torch.manual_seed(0)
    b = tiny_policy(lowdim_dataset, family)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=k)
    batch = {"observation.state": torch.randn(8, a.config.n_obs_steps, 2), "action": torch.randn(8, 4, 2)}
    loss = lambda p, s: p.compute_loss(batch, torch.Generator().manual_seed(s))  # noqa: E731
    assert loss(a, 1) == loss(b, 1)
    if family == "act":  # the CVAE's reparameterization noise comes from the generator
        assert loss(a, 1) != loss(a, 2)
    a.eval()
    obs = {"observation.state": batch["observation.state"]}
    torch.testing.assert_close(a.predict_chunk(obs, torch.Generator().manual_seed(1)),
                               a.predict_chunk(obs, torch.Generator().manual_seed(2)), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_falls(lowdim_dataset, family):
    torch.manual_seed(0)
    policy = tiny_policy(lowdim_dataset, family)
    losses = train(policy, lowdim_dataset, steps=150)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    # And it learned action = f(state) (range about [-1.5, 1.5]).
    states = torch.tensor([[0.5, -0.5], [-0.8, 0.2], [0.1, 0.9], [-0.3, -0.7]])
    expected = torch.stack([states[:, 0] + 0.5 * states[:, 1], -states[:, 1]], dim=1)
    history = states[:, None].expand(-1, policy.config.n_obs_steps, -1)
    chunk = policy.predict_chunk({"observation.state": history})
    now = policy.config.n_obs_steps - 1
    assert (chunk[:, now] - expected).abs().mean() < 0.25


# ---- ACT specifics ------------------------------------------------------------------------------
def test_act_without_vae_and_image_free_vae_token(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset, "act", use_vae=False)
    assert not any(name.startswith("vae_") for name, _ in policy.named_parameters())
    batch = {"observation.state": torch.randn(4, 1, 2), "action": torch.randn(4, 4, 2)}
    assert torch.isfinite(policy.compute_loss(batch))


def test_temporal_ensembler_weights_oldest_first():
    m = 0.5
    ens = TemporalEnsembler(m)
    w = ens.weights(3)
    assert w[0] > w[1] > w[2]
    np.testing.assert_allclose(w, np.exp(-m * np.arange(3)) / np.exp(-m * np.arange(3)).sum())
    # Chunk c is predicted at step c; its entry i is its prediction for step c + i: 100 * c + i.
    k = 3
    chunk = lambda c: torch.tensor([[[100.0 * c + i] for i in range(k)]])  # noqa: E731  (1, k, 1)
    outputs = [ens.update(chunk(c)).item() for c in range(5)]
    assert outputs[0] == 0.0  # alone: chunk 0's prediction for step 0
    e = lambda i: math.exp(-m * i)  # noqa: E731
    assert outputs[1] == pytest.approx((e(0) * 1 + e(1) * 100) / (e(0) + e(1)))
    # Step 3: chunk 0 (length 3) has expired; live are 1, 2, 3 -> predictions 102, 201, 300, oldest first.
    assert outputs[3] == pytest.approx((e(0) * 102 + e(1) * 201 + e(2) * 300) / (e(0) + e(1) + e(2)))
    assert ens.num_live == k - 1  # after step 4: chunk 2 is used up, chunks 3 and 4 remain
    ens.reset()
    assert ens.num_live == 0
    assert ens.update(chunk(7)).item() == 700.0
    with pytest.raises(ValueError, match="reset"):
        ens.update(torch.zeros(2, k, 1))


def test_temporal_ensembler_on_numpy():
    ens = TemporalEnsembler(0.01)
    a = ens.update(np.ones((2, 4, 3)))
    b = ens.update(np.zeros((2, 4, 3)))
    assert isinstance(b, np.ndarray) and a.shape == (2, 3)
    np.testing.assert_allclose(b, 1 / (1 + math.exp(-0.01)))


def test_act_temporal_ensembling_through_select_action(lowdim_dataset):
    """Inference every step; the action is the ensemble of hand-made chunks, aligned at To-1."""
    policy = tiny_policy(lowdim_dataset, "act", n_obs_steps=2, chunk_size=5, temporal_ensemble_coeff=0.1).eval()
    step = 0

    def fake_chunk(history, generator=None):  # chunk predicted at step s: value 10 * s + index
        nonlocal step
        out = (10.0 * step + torch.arange(5.0))[None, :, None].expand(1, 5, 2)
        step += 1
        return out

    policy.predict_chunk = fake_chunk
    reference = TemporalEnsembler(0.1)
    for s in range(6):
        assert policy.needs_new_chunk
        action = policy.select_action({"observation.state": np.zeros(2, np.float32)})
        expected = reference.update((10.0 * s + torch.arange(5.0))[None, 1:, None]).item()  # index To-1 = 1 is "now"
        np.testing.assert_allclose(action, [expected, expected], rtol=1e-6)
    assert step == 6
    policy.reset()
    step = 0
    assert policy.ensembler.num_live == 0
    np.testing.assert_allclose(policy.select_action({"observation.state": np.zeros(2, np.float32)}), [1.0, 1.0])


# ---- MLP specifics ------------------------------------------------------------------------------
def two_mode_episodes(length: int, positive) -> list[dict[str, np.ndarray]]:
    """Ten episodes over the same states whose actions are +0.8 where ``positive(episode)`` and -0.8 elsewhere."""
    state = np.stack([np.linspace(-1, 1, length), np.zeros(length)], axis=1).astype(np.float32)
    return [{"observation.state": state.copy(),
             "action": np.full((length, 2), 0.8 if positive(e) else -0.8, np.float32)} for e in range(10)]


def test_mlp_is_plain_linear_and_activation(lowdim_dataset):
    for act, layer in [("relu", nn.ReLU), ("tanh", nn.Tanh), ("elu", nn.ELU)]:
        policy = tiny_policy(lowdim_dataset, "mlp", activation=act)
        assert {type(m) for m in policy.net} == {nn.Linear, layer}
        assert not list(policy.encoder.parameters())
    single = tiny_policy(lowdim_dataset, "mlp", n_obs_steps=1, horizon=1, n_action_steps=1)
    assert single.net[-1].out_features == 2
    assert single.predict_chunk({"observation.state": torch.zeros(1, 1, 2)}).shape == (1, 1, 2)


def test_mlp_ensemble_trains_each_member_on_its_own_loss_and_acts_with_their_mean(lowdim_dataset):
    """ensemble = 3: members start apart, the loss is the mean of their own losses (not the mean's loss), the
    action is their mean, and ``net`` is that mean as one plain MLP 3x as wide (what the exporters read)."""
    policy = tiny_policy(lowdim_dataset, "mlp", ensemble=3, n_obs_steps=1, horizon=1, n_action_steps=1,
                         hidden_dims=[16, 8])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    members = policy.members(x)
    assert members.shape == (3, 5, 2) and not torch.allclose(members[0], members[1])
    net = policy.net
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [48, 24, 2]
    torch.testing.assert_close(net(x), members.mean(0), atol=1e-6, rtol=0)
    obs = {"observation.state": x.unsqueeze(1)}
    torch.testing.assert_close(policy.generate_actions(obs)[:, 0], members.mean(0), atol=1e-6, rtol=0)
    target = torch.randn(5, 1, 2, generator=torch.Generator().manual_seed(1))
    batch = {"observation.state": x.unsqueeze(1), "action": target}
    own = torch.stack([((members[k] - target[:, 0]) ** 2).mean() for k in range(3)]).mean()
    torch.testing.assert_close(policy.compute_loss(batch), own)
    losses = train(policy, lowdim_dataset, steps=150)
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="ensemble > 1 needs latent_dim = 0"):
        tiny_policy(lowdim_dataset, "mlp", ensemble=2, latent_dim=4)


def test_mlp_ensemble_saves_and_loads(lowdim_dataset, tmp_path):
    from robopolicy.policies.registry import load_policy

    policy = tiny_policy(lowdim_dataset, "mlp", ensemble=2)
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    obs = {"observation.state": torch.randn(3, 2, 2)}
    torch.testing.assert_close(loaded.predict_chunk(obs), policy.predict_chunk(obs))


def test_mlp_averages_two_modes(tmp_path):
    """Identical states lead half the episodes to +0.8 and half to -0.8: MSE regression answers the
    mean, between the modes (the failure diffusion and flow policies avoid)."""
    length = 20
    episodes = two_mode_episodes(length, positive=lambda e: e % 2 == 0)
    root = write_dataset(tmp_path / "two_modes", episodes)
    torch.manual_seed(0)
    policy = tiny_policy(root, "mlp")
    losses = train(policy, root, steps=150)
    # Normalized modes are ±1: no deterministic answer gets the MSE below 1, and the mean (0) reaches it.
    assert 0.9 < np.mean(losses[-10:]) < 1.1
    states = torch.from_numpy(episodes[0]["observation.state"])[:, None].expand(-1, 2, -1)
    chunk = policy.predict_chunk({"observation.state": states})
    assert chunk.abs().max() < 0.4, f"MLP predictions {chunk.abs().max():.2f} should lie between the modes ±0.8"


def test_mlp_l1_loss_keeps_the_larger_mode_where_mse_averages(tmp_path):
    """Seven episodes go to +0.8, three to -0.8 from the same states: MSE answers the weighted mean
    (0.32), L1 the median, which lies inside the larger mode."""
    episodes = two_mode_episodes(20, positive=lambda e: e < 7)
    root = write_dataset(tmp_path / "unequal_modes", episodes)
    states = torch.from_numpy(episodes[0]["observation.state"])[:, None].expand(-1, 2, -1)
    answers = {}
    for loss in ("mse", "l1"):
        torch.manual_seed(0)
        policy = tiny_policy(root, "mlp", loss=loss)
        train(policy, root, steps=300)
        answers[loss] = policy.predict_chunk({"observation.state": states}).mean().item()
    assert answers["mse"] == pytest.approx(0.32, abs=0.12)
    assert answers["l1"] == pytest.approx(0.8, abs=0.1)


def test_mlp_latent_carries_the_mode_in_training_and_is_dropped_at_inference(tmp_path):
    """latent_dim > 0 (ACT's CVAE recipe): the posterior sees the chunk, so reconstruction can reach both modes
    of the equal two-mode data that a plain regressor averages (loss about 1, test above); at inference z = 0
    and the policy is the plain ``net`` on the observation features, what the ONNX and C exporters write."""
    length = 20
    episodes = two_mode_episodes(length, positive=lambda e: e % 2 == 0)
    root = write_dataset(tmp_path / "two_modes", episodes)
    torch.manual_seed(0)
    policy = tiny_policy(root, "mlp", latent_dim=4, kl_weight=0.01)
    losses = train(policy, root, steps=300)
    assert np.mean(losses[-20:]) < 0.4, f"CVAE loss {np.mean(losses[-20:]):.2f}: the latent should carry the mode"
    states = torch.from_numpy(episodes[0]["observation.state"])[:, None].expand(-1, 2, -1)
    obs = {"observation.state": policy.normalizer.normalize("observation.state", states)}
    with torch.no_grad():
        plain = policy.net(policy.encoder(obs)).view(length, 4, 2)
        torch.testing.assert_close(policy.generate_actions(obs), plain)
    assert {type(m) for m in policy.net} == {nn.Linear, nn.ReLU}
    with pytest.raises(ValueError, match="latent_dim"):
        tiny_policy(root, "mlp", latent_dim=4, hidden_dims=[])


@pytest.mark.parametrize("family, overrides", [("mlp", {"loss": "l1"}), ("act", {"use_vae": False})])
def test_hypotheses_pick_a_mode_where_one_regressor_averages(tmp_path, family, overrides):
    """n_hypotheses = 2 on the equal two-mode data the plain MLP averages (test above): winner-takes-all training
    puts one candidate on each mode, the scores learn they are equally likely, and inference returns one whole
    mode, deterministically, instead of their mean."""
    length = 20
    episodes = two_mode_episodes(length, positive=lambda e: e % 2 == 0)
    root = write_dataset(tmp_path / "two_modes", episodes)
    torch.manual_seed(0)
    policy = tiny_policy(root, family, n_hypotheses=2, **overrides)
    train(policy, root, steps=300)
    to = policy.config.n_obs_steps
    states = torch.from_numpy(episodes[0]["observation.state"])[:, None].expand(-1, to, -1)
    normalized = {"observation.state": policy.normalizer.normalize("observation.state", states)}
    with torch.no_grad():
        if family == "mlp":
            scores, candidates = policy.hypotheses(normalized)
        else:
            scores, candidates = policy._decode(policy.encoder.feature_tokens(normalized), torch.zeros(length, 8))
    per_candidate = policy.normalizer.unnormalize("action", candidates).mean(dim=(0, 2, 3))
    assert sorted(per_candidate.tolist()) == pytest.approx([-0.8, 0.8], abs=0.1), "one candidate per mode"
    assert scores.softmax(-1).mean(0).tolist() == pytest.approx([0.5, 0.5], abs=0.15)
    chunk = policy.predict_chunk({"observation.state": states})
    assert (chunk.abs() - 0.8).abs().max() < 0.15, f"the chosen chunk should be a mode, got {chunk.abs().min():.2f}"
    torch.testing.assert_close(chunk, policy.predict_chunk({"observation.state": states}))


def test_hypotheses_config_checks(lowdim_dataset):
    assert tiny_policy(lowdim_dataset, "mlp", n_hypotheses=4).net[-1].out_features == 4 + 4 * 4 * 2
    for family in FAMILIES:
        with pytest.raises(ValueError, match="n_hypotheses"):
            tiny_policy(lowdim_dataset, family, n_hypotheses=0)
        with pytest.raises(ValueError, match="wta_epsilon"):
            tiny_policy(lowdim_dataset, family, n_hypotheses=2, wta_epsilon=1.0)
    with pytest.raises(ValueError, match="not both"):
        tiny_policy(lowdim_dataset, "mlp", n_hypotheses=2, latent_dim=4)


def test_mlp_rejects_an_unknown_loss(lowdim_dataset):
    with pytest.raises(ValueError, match="loss must be one of"):
        tiny_policy(lowdim_dataset, "mlp", loss="huber")
