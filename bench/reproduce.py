"""Rerun the headline results end to end from their documented commands, over several training seeds.

    python bench/reproduce.py --list                                   # what can run, and the commands
    python bench/reproduce.py --only quadrotor_mlp                     # one result: record, train x 3 seeds, evaluate
    python bench/reproduce.py --only quadrotor_mlp,quadrotor_flow --seeds 0,1,2,3
    python bench/reproduce.py --only pusht --dry-run                   # a group; print the commands only
    python bench/reproduce.py --table                                  # rebuild the table from what has run
    python bench/reproduce.py --only quadrotor_mlp --overlap           # which validation starts crash, and why

Each result is a documented recipe: the demonstrations (``robopolicy record``, once per dataset), the training
command (``robopolicy train``, once per training seed, step-based, no time budget, so a slower machine gets the
same network) and an evaluation on seeds declared *held out* in docs/benchmarks.md ("Reproduction across
training seeds"): none of them was used to choose anything. The report per result is the mean over training
seeds, the spread (sample standard deviation, min-max), a 95 % t-interval over the seeds (what another
training run is likely to average) and the Wilson interval of all episodes pooled (the evaluation's own noise).
The single best seed is listed as such and never as the result.

Everything lands in ``bench/results/reproduce/``: ``<result>/seed<s>.json`` per trained network (skipped when
present, so an interrupted run resumes; ``--force`` redoes), ``summary.json`` and ``summary.md`` for all
results that have run. Runs and datasets go to ``outputs/reproduce/`` (relative to the repository root).

Results: ``quadrotor_mlp`` (about 3 minutes per seed on a quiet 2-core machine), ``quadrotor_mlp_ensemble`` (the
same as a 3-member ensemble, ~4), ``quadrotor_flow`` (~5), ``quadrotor_flow_100k`` (the same trained 100,000 steps, ~16), ``quadrotor_sfp`` (~27), ``lift_flow`` (~20 plus 200 demos), the PushT families that train in under 15 minutes
(``pusht_flow``, ``pusht_mlp``, ``pusht_sfp_d``, ``pusht_sfp_s``, ``pusht_act``), ``pusht_demo`` (``make demo``'s
own command with its training seed set, ~30 minutes per seed) and ``export_latency`` (no
training: the latency table's speed-ups measured ``--seeds``-many times). ``--only`` takes result names or
group names (``quadrotor``, ``lift``, ``pusht``, ``demo``, ``export``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = REPO / "bench" / "results" / "reproduce"
OUT = "outputs/reproduce"  # runs and datasets, relative to the repository root (the commands run there)
# --threads: torch threads of every command (training's num_threads, evaluation's workers). None keeps each recipe's
# own. Two single-thread lines side by side use the two cores as well as one two-thread line, and the thread count
# does not change what is trained (same seed, same steps; only float summation order).
THREADS: int | None = None

# Held-out evaluation seeds, declared in docs/benchmarks.md before they were flown; never used for a choice.
# A quadrotor block of 2,048 episodes from seed s flies the starts seeded s .. s + 2047 (episode k: seed s + k).
QUADROTOR_BLOCKS = (300000, 302048, 304096)
QUADROTOR_VALIDATION_BLOCKS = (200000, 202048)  # for choices (bench/reproduce.py --validation, --snapshots)
PUSHT_START_SEED, PUSHT_EPISODES = 400000, 200
LIFT_START_SEED, LIFT_EPISODES = 410000, 100

DATASETS = {  # name -> the documented recording command (robopolicy record ...)
    "quad_hover": ["record", "task=quadrotor_hover", "device=expert", "num_episodes=1000",
                   f"output={OUT}/quad_hover_expert"],
    "lift": ["record", "task=Lift", "device=expert", "num_episodes=200", f"output={OUT}/lift_expert"],
}
QUAD_DATA = [f"dataset.root={OUT}/quad_hover_expert", "dataset.observation_keys=[observation.state]",
             "env.name=quadrotor_hover", "num_threads=1", "progress=false"]


@dataclass(frozen=True)
class Result:
    """One headline result: how its network is trained and how it is judged."""

    name: str
    group: str
    documented: str  # the claim as documented, for the table
    train: list[str] = field(default_factory=list)  # robopolicy train overrides (seed and output_dir are added)
    dataset: str | None = None  # key of DATASETS to record first
    evaluate: str = "quadrotor"  # quadrotor | lift | pusht | export | demo
    bounds: dict[str, tuple[str, float]] = field(default_factory=dict)  # metric -> (">=" | "<=", bound), on the mean
    pusht_family: str | None = None
    # An evaluation variant flies another result's trained networks (``networks``: that result's name) with extra
    # ``robopolicy eval`` overrides (e.g. ``n_action_steps=1``): a change of execution judged without retraining.
    networks: str | None = None
    eval_overrides: tuple[str, ...] = ()


def _quad(name: str, documented: str, overrides: list[str]) -> Result:
    return Result(name, "quadrotor", documented, [*overrides, *QUAD_DATA], "quad_hover", "quadrotor",
                  {"success_rate": (">=", 0.99), "crash_rate": ("<=", 0.005)})




def _pusht_results() -> list[Result]:
    from pusht_families import COMMON, FAMILIES  # the families' documented overrides, not a copy

    results = []
    for family in ("flow", "mlp", "sfp_d", "sfp_s", "act"):  # those with a training budget under 15 minutes
        overrides, minutes = FAMILIES[family]
        assert minutes < 15, family
        common = [c for c in COMMON if c.split("=")[0] not in {o.split("=")[0] for o in overrides}]
        results.append(Result(f"pusht_{family}", "pusht", f"docs/benchmarks.md section 1b, row `{family}`",
                              [*overrides, *common, "num_threads=2"], None, "pusht", pusht_family=family))
    return results


def all_results() -> dict[str, Result]:
    results = [
        # docs/quadrotor.md "Demonstrations, training and evaluation from the command line". The in-training
        # evaluation (eval_every, seed 0) only logs and keeps snapshots: the final network is the result.
        _quad("quadrotor_mlp", "99.7 % success, 0.29 % crashes (one run, seed block 0)",
              ["policy=mlp_quadrotor", "steps=100000", "batch_size=512", "lr=1e-3", "eval_every=10000",
               "eval_episodes=256"]),
        _quad("quadrotor_flow", "99.7 % success, 0.29 % crashes (one run, 1,024 episodes, seed 0)",
              ["policy=flow_quadrotor", "steps=30000", "batch_size=256", "lr=1e-3"]),
        _quad("quadrotor_sfp", "99.7 % success, 0.34 % crashes (one run, seed block 0)",
              ["policy=sfp_quadrotor", "steps=26000", "batch_size=256", "lr=1e-3"]),
        # The hover route that meets the crash bound on average: three members side by side, acting with their
        # mean (chosen on the validation blocks over one network, h64, one DAgger round; docs/benchmarks.md).
        _quad("quadrotor_mlp_ensemble", "issue 34: the hover MLP as a 3-member ensemble (policy.ensemble=3)",
              ["policy=mlp_quadrotor", "policy.ensemble=3", "steps=100000", "batch_size=512", "lr=1e-3",
               "eval_every=10000", "eval_episodes=256"]),
        # The hover flow route that meets the crash bound on average: the documented recipe trained 100k steps
        # (the MLP's count) instead of 30k (chosen on the validation blocks over Ta 1, 10 Euler steps and To 1).
        _quad("quadrotor_flow_100k", "issue 34: the hover flow recipe trained 100,000 steps (steps=100000)",
              ["policy=flow_quadrotor", "steps=100000", "batch_size=256", "lr=1e-3"]),
        Result("lift_flow", "lift", "100 % (one run, seeds 100000-100099)",
               ["policy=flow", "steps=3000", "lr=5e-4", "batch_size=256", "warmup_steps=300", "save_every=0",
                "log_every=100", "progress=false", f"dataset.root={OUT}/lift_expert", "env.name=Lift",
                "num_threads=2"], "lift", "lift", {"success_rate": (">=", 0.95)}),
        *_pusht_results(),
        # `make demo` itself (robopolicy demo, configs/demo.yaml), its evaluation moved to the held-out PushT seeds and
        # its wall-clock cap lifted so that every machine trains the planned steps; its issue-31 target is >= 50 %.
        Result("pusht_demo", "demo", "`make demo`: >= 50 % success on an idle 2-core machine (issue 31 item 3)",
               ["train.progress=false", "train.time_budget_min=0", "eval.n_videos=0", "control_episodes=0"],
               evaluate="demo", bounds={"success_rate": (">=", 0.5)}),
        Result("export_latency", "export", "docs/benchmarks.md section 2 (speed-up of ORT fused over torch eager)",
               evaluate="export"),
    ]
    return {r.name: r for r in results}


# ---- running the documented commands ------------------------------------------------------------------------
def robopolicy_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "robopolicy.cli", *args]


def with_threads(overrides: list[str]) -> list[str]:
    """The recipe's overrides with ``num_threads`` set to ``--threads`` (when given)."""
    if THREADS is None:
        return overrides
    return [*(o for o in overrides if not o.startswith("num_threads=")), f"num_threads={THREADS}"]


def command_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if THREADS is not None:  # evaluation commands have no num_threads; torch reads these at start-up
        env |= {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    return env


def run(cmd: list[str], dry_run: bool) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, check=True, cwd=REPO, env=command_env())


def ensure_dataset(key: str, dry_run: bool) -> None:
    root = REPO / DATASETS[key][-1].split("=", 1)[1]
    if (root / "meta" / "info.json").is_file():
        return
    run(robopolicy_cmd(*DATASETS[key]), dry_run)


def run_dir(result: Result, seed: int) -> Path:
    return REPO / OUT / "runs" / f"{result.networks or result.name}_seed{seed}"


def run_demo(result: Result, seed: int, dry_run: bool) -> dict[str, Any]:
    """``robopolicy demo`` with training seed ``seed``, evaluated on the held-out PushT seeds."""
    out = run_dir(result, seed)
    threads = [f"train.num_threads={THREADS}", f"eval.n_workers={THREADS}"] if THREADS is not None else []
    if not (out / "demo_report.json").is_file():
        run(robopolicy_cmd("demo", *result.train, *threads, f"train.seed={seed}", f"eval.n_episodes={PUSHT_EPISODES}",
                           f"eval.start_seed={PUSHT_START_SEED}", f"output_dir={out}"), dry_run)
    if dry_run:
        return {}
    report = json.loads((out / "demo_report.json").read_text())
    if "warning" in report:  # the cap is lifted above, so this would be a failure of the run, not a result
        raise SystemExit(f"{out}: {report['warning']}")
    return {"success_rate": report["eval"]["success_rate"], "n_episodes": report["eval"]["n_episodes"],
            "mean_max_coverage": report["eval"]["mean_max_coverage"]}


def train(result: Result, seed: int, dry_run: bool) -> Path:
    out = run_dir(result, seed)
    if not (out / "policy").is_dir():
        run(robopolicy_cmd("train", *with_threads(result.train), f"seed={seed}", f"output_dir={out}"), dry_run)
    return out


def eval_quadrotor(policy: Path, blocks: tuple[int, ...], dry_run: bool, overrides: tuple[str, ...] = (),
                   tag: str = "") -> dict[str, Any]:
    """``robopolicy eval`` on each 2,048-episode block; per-block rates and the pooled counts. ``overrides`` are
    extra eval overrides; their reports go to ``eval_<tag>_<start>`` beside the network's own."""
    per_block = {}
    for start in blocks:
        out = policy.parent / (f"eval_{tag}_{start}" if tag else f"eval_{start}")
        run(robopolicy_cmd("eval", f"checkpoint={policy}", "env.name=quadrotor_hover", "n_episodes=2048",
                           f"start_seed={start}", *overrides, f"output_dir={out}"), dry_run)
        if dry_run:
            continue
        report = json.loads((out / "eval_report.json").read_text())
        per_block[str(start)] = {k: report[k] for k in ("success_rate", "crash_rate", "rmse_mean", "n_episodes",
                                                         "crash_reasons")}
    if dry_run:
        return {}
    n = sum(b["n_episodes"] for b in per_block.values())
    pooled = {k: sum(b[k] * b["n_episodes"] for b in per_block.values()) / n
              for k in ("success_rate", "crash_rate", "rmse_mean")}
    return {**pooled, "n_episodes": n, "blocks": per_block}


def eval_runner(result: Result, policy: Path, dry_run: bool) -> dict[str, Any]:
    """PushT / Lift through the evaluation runner (the one ``robopolicy eval`` uses), held-out seeds."""
    from functools import partial

    from pusht_families import ROWS, Row, load_row_policy

    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.envs import env_factory
    from robopolicy.sim.evaluate import evaluate

    if result.evaluate == "pusht":
        row = next(r for r in ROWS if r.run == result.pusht_family)  # the family's first (headline) row
        task, episodes, start, max_steps = "pusht", PUSHT_EPISODES, PUSHT_START_SEED, 300
    else:
        row, task, episodes, start, max_steps = Row("flow_euler10", "flow", "flow", ("euler", 10)), "Lift", \
            LIFT_EPISODES, LIFT_START_SEED, 200
    print(f"evaluate {policy} on {task}, seeds {start}-{start + episodes - 1}", flush=True)
    if dry_run:
        return {}
    keys = [f.key for f in load_policy(policy).config.input_features]
    report = evaluate(partial(load_row_policy, str(policy), row), n_episodes=episodes, start_seed=start,
                      env_factory=env_factory(task, keys, render=False), n_workers=THREADS or 2, n_videos=0,
                      max_steps=max_steps, output_dir=policy.parent / f"eval_{start}").to_dict()
    return {"success_rate": report["success_rate"], "n_episodes": report["n_episodes"],
            **({"mean_max_coverage": report["mean_max_coverage"]} if task == "pusht" else {})}


def measure_export(repeat: int, dry_run: bool) -> dict[str, Any]:
    """One run of bench/export_latency.py; the speed-up columns per family."""
    cmd = [sys.executable, str(REPO / "bench" / "export_latency.py")]
    print("$ " + " ".join(cmd), flush=True)
    if dry_run:
        return {}
    text = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    rows = parse_markdown_table(text)
    return {f"speedup_fused_{r['family']}": float(r["speed-up fused"].rstrip("x")) for r in rows} | {
        f"speedup_per_step_{r['family']}": float(r["speed-up per-step"].rstrip("x")) for r in rows}


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def snapshot_curve(result: Result, seed: int, blocks: tuple[int, ...], steps: set[int] | None = None) -> dict[str, Any]:
    """The in-training snapshots (``eval_every``) flown on ``blocks``: crash rate against training step, which
    tells a schedule or checkpoint-choice effect from seed-to-seed variance. Only on validation blocks."""
    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.envs import evaluate_quadrotor

    curve = {}
    for snapshot in sorted((run_dir(result, seed) / "eval").glob("*/policy")):
        if steps and int(snapshot.parent.name.removeprefix("step-")) not in steps:
            continue
        reports = [evaluate_quadrotor(load_policy(snapshot), "quadrotor_hover", n_episodes=2048, seed=b) for b in blocks]
        n = sum(r["n_episodes"] for r in reports)
        curve[snapshot.parent.name] = {k: sum(r[k] * r["n_episodes"] for r in reports) / n
                                       for k in ("success_rate", "crash_rate", "rmse_mean")} | {"n_episodes": n}
        print(f"{result.name} seed {seed} {snapshot.parent.name}: {curve[snapshot.parent.name]}", flush=True)
    return curve


class ExpertPolicy:
    """The SE(3) expert behind the batched policy surface the evaluation flies (no DART noise)."""

    def __init__(self):
        from robopolicy.experts.quadrotor import SE3Controller

        self.controller = SE3Controller()

    def reset(self) -> None:
        self.controller.reset()

    def select_action(self, observation: dict[str, Any]):
        return self.controller(observation["observation.state"])


def expert_reference(blocks: tuple[int, ...]) -> dict[str, Any]:
    """The expert on the same starts: the floor a cloned policy is measured against."""
    from robopolicy.sim.envs import evaluate_quadrotor

    reports = {str(b): evaluate_quadrotor(ExpertPolicy(), "quadrotor_hover", n_episodes=2048, seed=b) for b in blocks}
    n = sum(r["n_episodes"] for r in reports.values())
    pooled = {k: sum(r[k] * r["n_episodes"] for r in reports.values()) / n for k in ("success_rate", "crash_rate")}
    return {**pooled, "n_episodes": n, "blocks": {b: {k: r[k] for k in ("success_rate", "crash_rate", "crash_reasons")}
                                                  for b, r in reports.items()}}


class MeanPolicy:
    """Several trained policies flown as one: the mean of their actions (what an ensemble does)."""

    def __init__(self, policies: list[Any]):
        self.policies = policies
        self.config = policies[0].config

    def reset(self) -> None:
        for p in self.policies:
            p.reset()

    def select_action(self, observation: dict[str, Any]):
        import numpy as np

        return np.mean([np.asarray(p.select_action(observation)) for p in self.policies], axis=0)


def crash_overlap(result: Result, seeds: list[int], blocks: tuple[int, ...]) -> dict[str, Any]:
    """Which starts crash, for the expert and each seed's network (validation blocks only): whether a retrained
    network's extra crashes are shared (hard starts) or its own (variance), and the seeds' mean action as a probe."""
    import torch

    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.quadrotor import evaluate_policy

    def crashes(policy) -> set[int]:
        with torch.no_grad():
            return {b + k for b in blocks for k, st in enumerate(evaluate_policy(policy, "hover", n_episodes=2048,
                                                                                   n_envs=1024, seed=b)) if st.crash}

    expert = crashes(ExpertPolicy())
    nets = {s: load_policy(run_dir(result, s) / "policy").eval() for s in seeds}
    per_seed = {s: crashes(p) for s, p in nets.items()}
    extra = {s: c - expert for s, c in per_seed.items()}
    mean_action = crashes(MeanPolicy(list(nets.values())))
    n = 2048 * len(blocks)
    return {"blocks": list(blocks), "episodes": n, "expert_crashes": sorted(expert),
            "crashes": {str(s): sorted(c) for s, c in per_seed.items()},
            "expert_crashes_also_crashed": {str(s): len(c & expert) for s, c in per_seed.items()},
            "extra_crashes": {str(s): len(e) for s, e in extra.items()},
            "extra_shared_pairwise": {f"{a},{b}": len(extra[a] & extra[b]) for a in seeds for b in seeds if a < b},
            "mean_action_of_the_seeds_crash_rate": len(mean_action) / n, "mean_action_crashes": sorted(mean_action),
            "date": time.strftime("%Y-%m-%d")}


# ---- statistics ---------------------------------------------------------------------------------------------
def aggregate(values: list[float], n_episodes: list[int] | None = None) -> dict[str, Any]:
    """Mean over training seeds, spread, a 95 % t-interval over seeds and (for rates) the pooled Wilson interval."""
    from scipy import stats

    from robopolicy.sim.evaluate import wilson_interval

    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    out = {"mean": mean, "std": std, "min": min(values), "max": max(values), "t95": [mean - half, mean + half],
           "per_seed": values}
    if n_episodes:  # a rate: its interval stays in [0, 1] (one seed has none: nan, not a clipped 0-100 %)
        if len(values) > 1:
            out["t95"] = [max(0.0, mean - half), min(1.0, mean + half)]
        total = sum(n_episodes)
        out["pooled_wilson95"] = list(wilson_interval(round(sum(v * n for v, n in zip(values, n_episodes))), total))
        out["pooled_episodes"] = total
    return out


def summarize(result: Result, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    seeds = sorted(per_seed)
    metrics = [k for k, v in per_seed[seeds[0]].items() if isinstance(v, (int, float)) and k != "n_episodes"
               and not k.startswith("train_")]
    n_eps = [per_seed[s]["n_episodes"] for s in seeds] if "n_episodes" in per_seed[seeds[0]] else None
    summary: dict[str, Any] = {"result": result.name, "documented": result.documented, "seeds": seeds,
                               "metrics": {m: aggregate([per_seed[s][m] for s in seeds],
                                                        n_eps if m.endswith("_rate") else None) for m in metrics}}
    if result.bounds:
        summary["bounds"] = {m: {"bound": f"{op} {b}", "met_by_mean": (summary["metrics"][m]["mean"] >= b if op == ">="
                                                                       else summary["metrics"][m]["mean"] <= b)}
                             for m, (op, b) in result.bounds.items()}
    if "success_rate" in summary["metrics"]:
        best = max(seeds, key=lambda s: (per_seed[s]["success_rate"], -per_seed[s].get("crash_rate", 0)))
        summary["best_single_run"] = {"seed": best, **{m: per_seed[best][m] for m in metrics}}
    return summary


def fmt_metric(name: str, agg: dict[str, Any]) -> str:
    pct = name.endswith("_rate")
    f = (lambda v: f"{100 * v:.2f} %") if pct else (lambda v: f"{v:.4g}")
    text = f"{f(agg['mean'])} ± {f(agg['std'])} (min {f(agg['min'])}, max {f(agg['max'])}; t95 {f(agg['t95'][0])}–" \
           f"{f(agg['t95'][1])}"
    if "pooled_wilson95" in agg:
        text += f"; pooled {agg['pooled_episodes']:,} episodes Wilson {f(agg['pooled_wilson95'][0])}–" \
                f"{f(agg['pooled_wilson95'][1])}"
    return text + ")"


def markdown(summaries: list[dict[str, Any]]) -> str:
    lines = ["| result | training seeds | metric | mean ± std over seeds (min, max; 95 % t-interval; pooled) | bound "
             "(on the mean) | documented |", "|---|---|---|---|---|---|"]
    for s in summaries:
        for metric, agg in s["metrics"].items():
            bound = s.get("bounds", {}).get(metric)
            bound_text = f"{bound['bound']}: {'met' if bound['met_by_mean'] else '**missed**'}" if bound else ""
            lines.append(f"| {s['result']} | {','.join(map(str, s['seeds']))} | {metric} | {fmt_metric(metric, agg)} | "
                         f"{bound_text} | {s['documented']} |")
    return "\n".join(lines) + "\n"


def write_summary(results: dict[str, Result]) -> list[dict[str, Any]]:
    summaries = []
    for name, result in results.items():
        files = sorted((RESULTS / name).glob("seed*.json"))
        if files:
            per_seed = {int(f.stem.removeprefix("seed")): json.loads(f.read_text())["metrics"] for f in files}
            summaries.append(summarize(result, per_seed))
    if summaries:
        (RESULTS / "summary.json").write_text(json.dumps(summaries, indent=2))
        (RESULTS / "summary.md").write_text(markdown(summaries))
    return summaries


# ---- main ---------------------------------------------------------------------------------------------------
def machine() -> str:
    import platform

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or 'cpu'}"


def training_info(out: Path) -> dict[str, Any]:
    path = next((p for p in (out / "train_summary.json", out / "train" / "train_summary.json") if p.is_file()), None)
    return json.loads(path.read_text()) if path else {}


def reproduce(result: Result, seed: int, dry_run: bool, blocks: tuple[int, ...]) -> dict[str, Any]:
    if result.evaluate == "export":
        return measure_export(seed, dry_run)
    if result.evaluate == "demo":
        return run_demo(result, seed, dry_run)
    if result.dataset:
        ensure_dataset(result.dataset, dry_run)
    out = train(result, seed, dry_run)
    if result.evaluate == "quadrotor":
        return eval_quadrotor(out / "policy", blocks, dry_run, result.eval_overrides,
                              result.name.partition("@")[2] if result.networks else "")
    return eval_runner(result, out / "policy", dry_run)


def eval_variants(base: list[Result], spec: str) -> dict[str, Result]:
    """``NAME=OVERRIDES`` -> ``<result>@NAME``: each base result's networks flown with the extra eval overrides."""
    tag, _, extra = spec.partition("=")
    if not tag or not extra or any("=" not in o for o in extra.split()):
        raise SystemExit(f"--eval-variant: expected NAME=KEY=VALUE [KEY=VALUE ...], got {spec!r}")
    if any(r.evaluate != "quadrotor" for r in base):
        raise SystemExit("--eval-variant: only quadrotor results take evaluation overrides; choose them with --only")
    return {f"{r.name}@{tag}": replace(r, name=f"{r.name}@{tag}", networks=r.networks or r.name,
                                       eval_overrides=(*r.eval_overrides, *extra.split())) for r in base}


def select(results: dict[str, Result], only: str) -> list[Result]:
    if not only:
        return list(results.values())
    chosen = []
    for token in only.split(","):
        matches = [r for r in results.values() if token in (r.name, r.group)]
        if not matches:
            raise SystemExit(f"--only: unknown result or group {token!r}; choose from {sorted(results)} or "
                             f"{sorted({r.group for r in results.values()})}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated result names or groups (default: everything)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (export_latency: repetitions)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--force", action="store_true", help="redo results already saved")
    ap.add_argument("--validation", action="store_true",
                    help="quadrotor: evaluate on the validation blocks (for choices) into <result>/validation/")
    ap.add_argument("--variant", default="",
                    help="NAME=OVERRIDES: train with extra overrides (space-separated) as result <result>+NAME, "
                         "e.g. --variant 'long=steps=300000' --validation (a candidate change, judged on validation seeds)")
    ap.add_argument("--eval-variant", default="",
                    help="NAME=OVERRIDES: fly each chosen quadrotor result's trained networks with extra eval "
                         "overrides (space-separated) as result <result>@NAME, e.g. --eval-variant 'ta1=n_action_steps=1' "
                         "--validation (no retraining)")
    ap.add_argument("--snapshots", action="store_true",
                    help="quadrotor: fly each run's in-training snapshots on the validation blocks (crash vs step)")
    ap.add_argument("--snapshot-steps", default="", help="--snapshots: only these steps (comma-separated)")
    ap.add_argument("--expert", action="store_true", help="quadrotor: the SE(3) expert on the same blocks (the floor)")
    ap.add_argument("--overlap", action="store_true",
                    help="quadrotor: which validation starts each seed's network and the expert crash, and the seeds' "
                         "mean action flown as one policy (into <result>/validation/crash_overlap.json)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per command (training num_threads, evaluation workers); default: the recipe's")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true", help="only rebuild summary.json / summary.md")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    if THREADS is not None:  # in-process work (a one-worker evaluation) too
        import torch

        torch.set_num_threads(THREADS)
    results = all_results()
    if args.variant:
        tag, _, extra = args.variant.partition("=")
        base = select(results, args.only)
        keys = {o.split("=")[0] for o in extra.split()}  # the variant's value replaces the documented one
        results = {f"{r.name}+{tag}": replace(r, name=f"{r.name}+{tag}", train=[
            *(o for o in r.train if o.split("=")[0] not in keys), *extra.split()]) for r in base}
        args.only = ",".join(results)
    if args.eval_variant:
        results = eval_variants(select(results, args.only), args.eval_variant)
        args.only = ",".join(results)
    if args.list:
        for r in results.values():
            print(f"{r.name:16s} {r.group:10s} train: {' '.join(r.train) or '-'}")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 3 and not args.dry_run:
        print("note: fewer than 3 training seeds; the spread and interval are not meaningful", flush=True)
    if args.expert:
        for name, blocks in (("validation", QUADROTOR_VALIDATION_BLOCKS), ("held_out", QUADROTOR_BLOCKS)):
            report = expert_reference(blocks)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"quadrotor_expert_{name}.json").write_text(json.dumps(report, indent=2))
            print(f"expert on the {name} blocks: {json.dumps(report)}", flush=True)
        return
    if args.overlap:
        for result in select(results, args.only):
            report = crash_overlap(result, seeds, QUADROTOR_VALIDATION_BLOCKS)
            path = RESULTS / result.name / "validation" / "crash_overlap.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1))
            print(f"{result.name}: extra crashes {report['extra_crashes']}, shared {report['extra_shared_pairwise']}, "
                  f"mean action {report['mean_action_of_the_seeds_crash_rate']:.2%}", flush=True)
        return
    if args.snapshots:
        for result in select(results, args.only):
            for seed in seeds:
                path = RESULTS / result.name / "validation" / f"snapshots_seed{seed}.json"
                before = json.loads(path.read_text())["curve"] if path.is_file() else {}
                steps = {int(x) for x in args.snapshot_steps.split(",")} if args.snapshot_steps else None
                curve = before | snapshot_curve(result, seed, QUADROTOR_VALIDATION_BLOCKS, steps)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"blocks": QUADROTOR_VALIDATION_BLOCKS, "curve": dict(sorted(curve.items())),
                                            "date": time.strftime("%Y-%m-%d")}, indent=2))
        return
    if not args.table:
        for result in select(results, args.only):
            blocks = QUADROTOR_VALIDATION_BLOCKS if args.validation else QUADROTOR_BLOCKS
            folder = RESULTS / result.name / ("validation" if args.validation else "")
            for seed in seeds:
                path = folder / f"seed{seed}.json"
                if path.is_file() and not args.force:
                    print(f"{result.name} seed {seed}: done ({path})")
                    continue
                t0 = time.perf_counter()
                metrics = reproduce(result, seed, args.dry_run, blocks)
                if args.dry_run:
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                payload = {"result": result.name, "seed": seed, "metrics": metrics,
                           "train": training_info(run_dir(result, seed)),
                           "train_overrides": result.train if result.evaluate == "demo" else with_threads(result.train),
                           "eval_overrides": list(result.eval_overrides),
                           "eval_blocks": list(blocks) if result.evaluate == "quadrotor" else None,
                           "wall_s": time.perf_counter() - t0, "machine": machine(),
                           "date": time.strftime("%Y-%m-%d")}
                path.write_text(json.dumps(payload, indent=2))
                print(f"{result.name} seed {seed}: {json.dumps({k: v for k, v in metrics.items() if k != 'blocks'})}",
                      flush=True)
    if not args.dry_run:
        summaries = write_summary(all_results() | results)  # every result saved so far, variants included
        print(markdown(summaries) if summaries else "nothing has run yet")


if __name__ == "__main__":
    main()
