"""Open-loop accuracy of a trained policy's chunk, position by position, on windows of its own demos.

    python bench/chunk_accuracy.py outputs/quad/runs/figure8_flow_mlp/policy outputs/quad/figure8_expert

Samples 2,048 training windows (seed 0), predicts each chunk from the window's observations and prints the RMS
error per chunk position in normalized action units, with zero noise and with random noise (flow) or the
policy's own sampling (other families). Position To - 1 is the action executed first. A closed-loop failure
with a good open-loop first action points at the loop (alignment, Ta); a bad first action points at the fit.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies.registry import load_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy")
    ap.add_argument("dataset")
    ap.add_argument("--windows", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.policy).eval()
    cfg = policy.config
    dataset = LeRobotDataset(args.dataset)
    keys = [f.key for f in cfg.input_features]
    data = {k: policy.normalizer.normalize(k, torch.from_numpy(dataset.column(k)).float())
            for k in [*keys, policy.action_key]}
    sampler = WindowSampler(data, dataset.episode_bounds, keys, policy.action_key, cfg.n_obs_steps, cfg.horizon,
                            cfg.n_action_steps)
    g = torch.Generator().manual_seed(0)
    batch = sampler.sample(args.windows, g)
    obs = {k: batch[k] for k in keys}
    shape = (args.windows, cfg.horizon, cfg.action_dim)
    with torch.no_grad():
        for label in ("zero noise", "sampled"):
            if policy.name == "flow":
                noise = torch.zeros(shape) if label == "zero noise" else torch.randn(shape, generator=g)
                chunk = policy.generate_actions(obs, noise=noise)
            else:
                if label == "zero noise":
                    continue
                chunk = policy.generate_actions(obs, generator=g)
            rms = (chunk - batch[policy.action_key]).pow(2).mean(dim=(0, 2)).sqrt().numpy()
            print(f"{label:>10s}: RMS error per chunk position (first executed: {cfg.n_obs_steps - 1}): "
                  f"{np.array2string(rms, precision=4)}")


if __name__ == "__main__":
    main()
