"""Issue 31 item 2 without a GPU: image-based PushT's learning curve on this CPU, and what it extrapolates to.

    python bench/pusht_image_curve.py train [--minutes 120] [--threads 2]   # checkpoints every 2,000 steps
    python bench/pusht_image_curve.py curve [--episodes 100] [--steps 2000,4000]  # checkpoints, validation seeds
    python bench/pusht_image_curve.py fit [--late-from-step 16000]  # success vs samples; where 63.8 % lies; figure

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
FIGURE = REPO / "docs" / "img" / "pusht_image_curve.png"
SEED = 1_200_000
ANCHOR = 0.638  # LeRobot diffusion_pusht, 500 episodes
BATCH = 64
RECIPE = ["policy=flow", "dataset.observation_keys=[observation.image,observation.state]", "policy.down_dims=[64,128]",
          "policy.activation=silu", "policy.image_encoder.width=16", f"batch_size={BATCH}", "lr=3e-4",
          "warmup_steps=500", "steps=60000", "keep_checkpoints=0", "log_every=100", "progress=false"]


def train_command(minutes: float, threads: int, run: Path, device: str = "cpu", save_every: int = 2000) -> list[str]:
    """The recipe's ``robopolicy train`` call; it resumes when ``run`` was trained before (the budget adds up)."""
    return [sys.executable, "-m", "robopolicy.cli", "train", *RECIPE, f"save_every={save_every}",
            f"time_budget_min={minutes}", f"num_threads={threads}", f"device={device}", f"output_dir={run}",
            *(["resume=true"] if (run / "config.yaml").is_file() else [])]


def cmd_train(minutes: float, threads: int, run: Path = RUN, device: str = "cpu", save_every: int = 2000) -> None:
    cmd = train_command(minutes, threads, run, device, save_every)
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def checkpoints(run: Path = RUN) -> list[tuple[int, Path]]:
    found = sorted((int(p.name.split("-")[1]), p / "policy") for p in (run / "checkpoints").glob("step-*"))
    return [(step, path) for step, path in found if path.is_dir()]


def chosen(found: list[tuple[int, Path]], steps: list[int] | None) -> list[tuple[int, Path]]:
    """The checkpoints to fly: all of them, or only the named steps (0 names the last one).

    A log-samples fit learns most from checkpoints spread evenly in log steps, so a CPU-bound curve names a few
    doublings instead of flying every 2,000 steps. A named step that was never saved is an error, not a skip.
    """
    if steps is None or not found:
        return found
    by_step = dict(found)
    wanted = {found[-1][0] if step == 0 else step for step in steps}
    missing = sorted(wanted - set(by_step))
    if missing:
        raise SystemExit(f"--steps {missing}: no such checkpoint (have {sorted(by_step)})")
    return [(step, by_step[step]) for step in sorted(wanted)]


def cmd_curve(episodes: int, workers: int, force: bool, steps: list[int] | None = None,
              ta: int | None = None, run: Path = RUN, results: Path = RESULTS) -> None:
    """Fly checkpoints on the validation seeds; ``ta`` executes another horizon (a side point, left out of the fit)."""
    from robopolicy.cli import load_policy_for_eval
    from robopolicy.sim.envs import env_factory
    from robopolicy.sim.evaluate import evaluate

    results.mkdir(parents=True, exist_ok=True)
    for step, policy in chosen(checkpoints(run), steps):
        out = results / f"step{step:06d}{f'_ta{ta}' if ta else ''}.json"
        if out.is_file() and not force:
            continue
        report = evaluate(partial(load_policy_for_eval, str(policy), None, None, ta), n_episodes=episodes,
                          start_seed=SEED, env_factory=env_factory("pusht", ["observation.image", "observation.state"]),
                          n_workers=workers, n_videos=1, output_dir=run / "eval" / out.stem,
                          progress=True).to_dict()
        payload = {"step": step, "samples": step * BATCH, "n_action_steps": ta, "fitted": ta is None,
                   "n_episodes": report["n_episodes"], "n_successes": report["n_successes"], "success_rate": report["success_rate"],
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


def extrapolate(points: list[dict], bootstrap: int, seed: int = 0) -> dict:
    """The logistic fit over ``points`` and the samples where it reaches the anchor, with a parametric bootstrap
    (episode counts redrawn from the measured rates). ``None`` means never: the fitted curve does not rise."""
    x = np.log10([p["samples"] for p in points])
    k = np.array([p["n_successes"] for p in points], dtype=float)
    n = np.array([p["n_episodes"] for p in points], dtype=float)
    a, b = fit_logistic(x, k, n)
    rng = np.random.default_rng(seed)
    draws = np.array([samples_at(*fit_logistic(x, rng.binomial(n.astype(int), k / n), n), ANCHOR)
                      for _ in range(bootstrap)])
    lo, hi = np.quantile(draws, [0.025, 0.975], method="nearest")
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    return {"steps": [p["step"] for p in points], "a": a, "b_per_decade": b,
            "samples_to_anchor": finite(samples_at(a, b, ANCHOR)),
            "samples_to_anchor_bootstrap95": [finite(lo), finite(hi)],
            "bootstrap_share_never": float(np.mean(~np.isfinite(draws)))}


def cmd_fit(bootstrap: int, run: Path = RUN, results: Path = RESULTS, figure: Path | None = FIGURE,
            late_from_step: int | None = None) -> dict:
    """Fit every flown checkpoint; ``late_from_step`` adds a second fit over the later ones alone, a check on the
    shape the extrapolation assumes (a curve that bends over shows as a shallower late slope)."""
    flown = [json.loads(p.read_text()) for p in sorted(results.glob("step*.json"))]
    points = [p for p in flown if p.get("fitted", True)]
    side = [p for p in flown if not p.get("fitted", True)]
    if len(points) < 3:
        raise SystemExit(f"need at least 3 evaluated checkpoints in {results}, found {len(points)}")
    fits = {"all": extrapolate(points, bootstrap)}
    if late_from_step is not None:
        late = [p for p in points if p["step"] >= late_from_step]
        if len(late) < 3:
            raise SystemExit(f"--late-from-step {late_from_step}: {len(late)} checkpoints from there, need 3")
        fits["late"] = extrapolate(late, bootstrap)
    summary_path = run / "train_summary.json"
    train = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    rate = train["steps"] * train["batch_size"] / train["train_time_s"] if train.get("train_time_s") else None
    for fit in fits.values():
        needed = fit["samples_to_anchor"]
        fit["hours_to_anchor_here"] = needed / rate / 3600 if rate and needed else None
    result = {"points": [{k_: p[k_] for k_ in ("step", "samples", "n_successes", "n_episodes", "success_rate",
                                               "success_ci95", "mean_max_coverage")} for p in points],
              "fits": fits, "anchor": ANCHOR, "train_samples_per_s": rate, "train": train,
              "side_points": [{k_: p[k_] for k_ in ("step", "n_action_steps", "success_rate", "success_ci95",
                                                    "mean_max_coverage")} for p in side],
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    (results / "fit.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if figure is not None:
        plot(points, fits, figure, side)
    return result


def plot(points: list[dict], fits: dict[str, dict], out: Path, side: list[dict] = ()) -> None:
    """The measured checkpoints with their intervals, each fit carried on past them, and the anchor; ``side``
    points (another Ta on a checkpoint) are drawn apart, since no fit uses them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.special import expit

    samples = np.array([p["samples"] for p in points], dtype=float)
    rate = np.array([p["success_rate"] for p in points])
    lo, hi = np.array([p["success_ci95"] for p in points]).T
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.errorbar(samples, 100 * rate, yerr=[100 * (rate - lo), 100 * (hi - rate)], fmt="o", capsize=3, color="C0",
                label=f"checkpoints, {' or '.join(str(n) for n in sorted({p['n_episodes'] for p in points}))} "
                      "validation episodes each (95 % Wilson)")
    for p in side:
        r, (l_, h_) = p["success_rate"], p["success_ci95"]
        ax.errorbar(p["samples"] * 1.04, 100 * r, yerr=[[100 * (r - l_)], [100 * (h_ - r)]], fmt="s", capsize=3,
                    color="C2", label=f"Ta {p['n_action_steps']} on that checkpoint (not fitted)")
    reach = [v for fit in fits.values() for v in (fit["samples_to_anchor"], *fit["samples_to_anchor_bootstrap95"])
             if v is not None]
    end = min(max([samples.max() * 10, *reach]) * 1.5, samples.max() * 30)
    for (name, fit), color in zip(fits.items(), ("C1", "C4")):
        first = min(p["samples"] for p in points if p["step"] in fit["steps"])
        grid = np.logspace(np.log10(first), np.log10(end), 200)
        measured = grid <= samples.max()
        curve = 100 * expit(fit["a"] + fit["b_per_decade"] * np.log10(grid))
        where = f"{fit['samples_to_anchor'] / 1e6:.1f} M samples" if fit["samples_to_anchor"] else "never"
        over = "every checkpoint" if name == "all" else f"steps >= {min(fit['steps']):,}"
        ax.plot(grid[measured], curve[measured], color=color,
                label=f"fit over {over}: {fit['b_per_decade']:.2f}/decade, anchor at {where}")
        ax.plot(grid[~measured], curve[~measured], color=color, linestyle="--")
    ax.axhline(100 * ANCHOR, color="C3", linestyle=":", label=f"LeRobot diffusion_pusht {ANCHOR:.1%} (images, GPU)")
    ax.set_xscale("log")
    ax.set_xlabel("training samples (windows; batch 64); dashed: extrapolation")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Image PushT on 2 CPU cores: flow, U-Net (64, 128), encoder width 16")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["train", "curve", "fit"])
    ap.add_argument("--minutes", type=float, default=120.0, help="train: wall-clock budget (resumes if run before)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--steps", type=lambda text: [int(v) for v in text.split(",")], default=None,
                    help="curve: comma-separated checkpoint steps to fly (default: every checkpoint)")
    ap.add_argument("--ta", type=int, default=None, help="curve: execute Ta actions per chunk (a side point, not fitted)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--device", default="cpu", help="train: cpu or cuda (bench/gpu_image_pusht.sh)")
    ap.add_argument("--save-every", type=int, default=2000, help="train: checkpoint interval in steps")
    ap.add_argument("--run", type=Path, default=RUN, help="the training run's folder")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where curve writes and fit reads")
    ap.add_argument("--figure", type=Path, default=FIGURE, help="fit: the figure to write")
    ap.add_argument("--late-from-step", type=int, default=None, help="fit: also fit the checkpoints from this step on")
    args = ap.parse_args()
    if args.command == "train":
        cmd_train(args.minutes, args.threads, args.run, args.device, args.save_every)
    elif args.command == "curve":
        cmd_curve(args.episodes, args.threads, args.force, args.steps, args.ta, args.run, args.results)
    else:
        cmd_fit(args.bootstrap, args.run, args.results, args.figure, args.late_from_step)


if __name__ == "__main__":
    main()
