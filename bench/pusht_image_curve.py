"""Issue 31 item 2 without a GPU: image-based PushT's learning curve on this CPU, and what it extrapolates to.

    python bench/pusht_image_curve.py train [--minutes 120] [--threads 2]   # checkpoints every 2,000 steps
    python bench/pusht_image_curve.py curve [--episodes 100]                # every checkpoint, validation seeds
    python bench/pusht_image_curve.py fit                                   # success vs samples; where 63.8 % lies

The recipe is the one-hour image run of docs/benchmarks.md section 1b ("An hour of image training gets a policy
that pushes", 23.5 %): flow matching, U-Net (64, 128) with SiLU, the image encoder at half width, 96 x 96 camera
plus agent position, batch 64, lr 3e-4. Checkpoints are flown on validation seeds 1,200,000 onward with rendered
images (no choice is made from them, so they need no held-out seeds). ``fit`` fits success = sigmoid(a + b log10
samples) by maximum likelihood on the binomial counts and reports the training samples (and hours at the measured
rate) at which the fit reaches LeRobot's 63.8 %, with a bootstrap interval. An extrapolation, labelled as one: it
assumes the curve keeps its shape past the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pusht_diffusion import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pusht_image_curve"
RUN = REPO / "outputs" / "pusht_image_curve" / "flow_image"
SEED = 1_200_000
ANCHOR = 0.638  # LeRobot diffusion_pusht, 500 episodes
BATCH = 64
RECIPE = ["policy=flow", "dataset.observation_keys=[observation.image,observation.state]", "policy.down_dims=[64,128]",
          "policy.activation=silu", "policy.image_encoder.width=16", f"batch_size={BATCH}", "lr=3e-4",
          "warmup_steps=500", "steps=60000", "save_every=2000", "keep_checkpoints=0", "log_every=100", "progress=false"]


def cmd_train(minutes: float, threads: int) -> None:
    cmd = [sys.executable, "-m", "robopolicy.cli", "train", *RECIPE, f"time_budget_min={minutes}",
           f"num_threads={threads}", f"output_dir={RUN}", *(["resume=true"] if (RUN / "config.yaml").is_file() else [])]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def checkpoints() -> list[tuple[int, Path]]:
    found = sorted((int(p.name.split("-")[1]), p / "policy") for p in (RUN / "checkpoints").glob("step-*"))
    return [(step, path) for step, path in found if path.is_dir()]


def cmd_curve(episodes: int, workers: int, force: bool) -> None:
    from robopolicy.cli import load_policy_for_eval
    from robopolicy.sim.envs import env_factory
    from robopolicy.sim.evaluate import evaluate

    RESULTS.mkdir(parents=True, exist_ok=True)
    for step, policy in checkpoints():
        out = RESULTS / f"step{step:06d}.json"
        if out.is_file() and not force:
            continue
        report = evaluate(partial(load_policy_for_eval, str(policy), None, None, None), n_episodes=episodes,
                          start_seed=SEED, env_factory=env_factory("pusht", ["observation.image", "observation.state"]),
                          n_workers=workers, n_videos=1, output_dir=RUN / "eval" / f"step{step:06d}",
                          progress=True).to_dict()
        payload = {"step": step, "samples": step * BATCH, "n_episodes": report["n_episodes"],
                   "n_successes": report["n_successes"], "success_rate": report["success_rate"],
                   "success_ci95": report["success_ci95"], "mean_max_coverage": report["mean_max_coverage"],
                   "seeds": [SEED, SEED + episodes - 1], "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
        out.write_text(json.dumps(payload, indent=2))
        print(f"step {step}: {payload['success_rate']:.1%}, coverage {payload['mean_max_coverage']:.3f}", flush=True)


def fit_logistic(log_samples: np.ndarray, successes: np.ndarray, episodes: np.ndarray) -> tuple[float, float]:
    """(a, b) of success = sigmoid(a + b x) maximizing the binomial likelihood."""
    from scipy.optimize import minimize
    from scipy.special import expit

    def nll(theta: np.ndarray) -> float:
        p = np.clip(expit(theta[0] + theta[1] * log_samples), 1e-9, 1 - 1e-9)
        return -float(np.sum(successes * np.log(p) + (episodes - successes) * np.log(1 - p)))

    return tuple(minimize(nll, np.array([-5.0, 1.0]), method="Nelder-Mead").x)


def samples_at(a: float, b: float, p: float) -> float:
    return float(10 ** ((np.log(p / (1 - p)) - a) / b)) if b > 0 else float("inf")


def cmd_fit(bootstrap: int) -> dict:
    points = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("step*.json"))]
    if len(points) < 3:
        raise SystemExit(f"need at least 3 evaluated checkpoints in {RESULTS}, found {len(points)}")
    x = np.log10([p["samples"] for p in points])
    k = np.array([p["n_successes"] for p in points], dtype=float)
    n = np.array([p["n_episodes"] for p in points], dtype=float)
    a, b = fit_logistic(x, k, n)
    rng = np.random.default_rng(0)
    draws = [samples_at(*fit_logistic(x, rng.binomial(n.astype(int), k / n), n), ANCHOR) for _ in range(bootstrap)]
    summary_path = RUN / "train_summary.json"
    train = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    rate = train["steps"] * train["batch_size"] / train["train_time_s"] if train.get("train_time_s") else None
    needed = samples_at(a, b, ANCHOR)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    result = {"points": [{k_: p[k_] for k_ in ("step", "samples", "success_rate", "mean_max_coverage")} for p in points],
              "fit": {"a": a, "b_per_decade": b}, "anchor": ANCHOR, "samples_to_anchor": needed,
              "samples_to_anchor_bootstrap95": [float(lo), float(hi)], "train_samples_per_s": rate,
              "hours_to_anchor_here": needed / rate / 3600 if rate else None,
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    (RESULTS / "fit.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["train", "curve", "fit"])
    ap.add_argument("--minutes", type=float, default=120.0, help="train: wall-clock budget (resumes if run before)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    if args.command == "train":
        cmd_train(args.minutes, args.threads)
    elif args.command == "curve":
        cmd_curve(args.episodes, args.threads, args.force)
    else:
        cmd_fit(args.bootstrap)


if __name__ == "__main__":
    main()
