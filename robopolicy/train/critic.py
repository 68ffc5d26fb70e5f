"""Train the sample-and-select critic of a trained policy (``robopolicy.policies.selection``).

The critic learns to tell a dataset window's demonstrated chunk (label 1) from the policy's own sample for the same
observation history (label 0). The policy's samples are drawn once, into a bank (one per window, for up to
``max_windows`` windows), since drawing them is what costs: 10 network evaluations per chunk for flow. One tenth of
the windows is held out to report the critic's accuracy on windows it never saw.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import track

from robopolicy.configs import resolve_path
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies.base import Policy
from robopolicy.policies.selection import ChunkCritic, CriticConfig


@torch.no_grad()
def negative_bank(policy: Policy, sampler: WindowSampler, window_ids: torch.Tensor, generator: torch.Generator,
                  batch_size: int = 512, progress: bool = True) -> dict[str, torch.Tensor]:
    """Observation histories, demonstrated chunks and one policy sample each, for ``window_ids``."""
    parts: list[dict[str, torch.Tensor]] = []
    batches = list(window_ids.split(batch_size))
    for ids in (track(batches, description="policy samples") if progress else batches):
        batch = sampler.get(ids)
        obs = {k: batch[k] for k in sampler.obs_keys}
        parts.append({**obs, "demo": batch[sampler.action_key], "sample": policy.generate_actions(obs, generator)})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def train_critic(policy: Policy, dataset_root: str | Path, obs_keys: list[str], action_key: str = "action", *,
                 steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, max_windows: int = 16384,
                 hidden_dim: int = 256, n_layers: int = 3, seed: int = 0,
                 progress: bool = True) -> tuple[ChunkCritic, dict[str, Any]]:
    """A critic for ``policy`` on the dataset it was trained on; returns it and a report (losses, held-out accuracy)."""
    dataset = LeRobotDataset(resolve_path(str(dataset_root)))
    if any(k in dataset.video_keys for k in obs_keys):
        raise ValueError(f"train_critic: camera features {[k for k in obs_keys if k in dataset.video_keys]} are not "
                         "supported yet; give the state features only")
    c = policy.config
    wanted = [f.key for f in c.input_features]
    if sorted(obs_keys) != sorted(wanted):
        raise ValueError(f"train_critic: the policy reads {wanted}, not {obs_keys}")
    policy = policy.eval()
    data = {k: policy.normalizer.normalize(k, torch.from_numpy(dataset.column(k)).float()) for k in [*obs_keys,
                                                                                                       action_key]}
    sampler = WindowSampler(data, dataset.episode_bounds, obs_keys, action_key, c.n_obs_steps, c.horizon,
                            c.n_action_steps)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randperm(len(sampler), generator=generator)[:max_windows]
    t0 = time.perf_counter()
    bank = negative_bank(policy, sampler, ids, generator, progress=progress)
    bank_s = time.perf_counter() - t0
    n_val = max(1, len(ids) // 10)
    val = {k: v[:n_val] for k, v in bank.items()}
    train = {k: v[n_val:] for k, v in bank.items()}
    critic = ChunkCritic(CriticConfig.for_policy(policy, hidden_dim=hidden_dim, n_layers=n_layers), policy.normalizer)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    n_train = len(train["demo"])

    def loss_of(part: dict[str, torch.Tensor], idx: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        sel = {k: (v if idx is None else v[idx]) for k, v in part.items()}
        obs = {k: sel[k] for k in obs_keys}
        pos, neg = critic(obs, sel["demo"]), critic(obs, sel["sample"])
        loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
            F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        accuracy = ((pos > 0).float().mean() + (neg < 0).float().mean()).item() / 2
        return loss, accuracy

    t0 = time.perf_counter()
    first_loss = math.nan
    for step in (track(range(steps), description="critic") if progress else range(steps)):
        critic.train()
        loss, _ = loss_of(train, torch.randint(n_train, (batch_size,), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step == 0:
            first_loss = loss.item()
    critic.eval()
    with torch.no_grad():
        train_loss, train_acc = loss_of({k: v[:n_val] for k, v in train.items()})
        val_loss, val_acc = loss_of(val)
    report = {"windows": len(ids), "held_out_windows": n_val, "steps": steps, "batch_size": batch_size,
              "first_loss": first_loss, "train_loss": train_loss.item(), "train_accuracy": train_acc,
              "held_out_loss": val_loss.item(), "held_out_accuracy": val_acc, "bank_s": bank_s,
              "train_s": time.perf_counter() - t0}
    return critic, report


__all__ = ["negative_bank", "train_critic"]
