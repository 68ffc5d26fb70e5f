"""Diffusion Policy, flow and ACT on scripted robosuite demos (state observations), ≥ 100 seeds each.

    python bench/arm_policies.py record --task Lift                 # 200 expert demos -> outputs/arms/lift_expert
    python bench/arm_policies.py train  --task Lift [--only dp,flow] [--threads 1]
    python bench/arm_policies.py eval   --task Lift [--episodes 100]
    python bench/arm_policies.py served --task Lift --run flow [--episodes 100]   # policy server + control loop
    python bench/arm_policies.py table

Everything goes through the project's own commands: ``robopolicy record device=expert``, ``robopolicy train
env.name=<task>`` and the evaluation runner with ``env_factory(<task>)`` (the same one ``robopolicy eval
env.name=<task>`` uses). Runs land in ``outputs/arms/runs/<task>_<family>``; results in
``bench/results/arm_policies/<task>_<row>.json``, skipped when present unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pusht_diffusion import machine  # noqa: E402
from pusht_families import Row, load_row_policy  # noqa: E402  (rows and their loader are shared)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "arm_policies"
OUT = REPO / "outputs" / "arms"
COMMON = ["warmup_steps=300", "save_every=0", "log_every=100", "progress=false"]
# family -> (training overrides, minutes on the 2-core machine, two runs sharing it at one thread each)
FAMILIES: dict[str, tuple[list[str], float]] = {
    "diffusion": (["policy=diffusion", "steps=4000", "lr=5e-4", "batch_size=256"], 20),
    "flow": (["policy=flow", "steps=3000", "lr=5e-4", "batch_size=256"], 20),
    "act": (["policy=act", "policy.n_action_steps=8", "steps=4000", "lr=1e-4", "batch_size=64"], 15),
}
ROWS = {row.key: row for row in (
    Row("dp_ddim10", "Diffusion Policy, DDIM 10", "diffusion", ("DDIM", 10)),
    Row("flow_euler10", "Flow matching, Euler 10", "flow", ("euler", 10)),
    Row("act_chunk", "ACT, chunk of 16, Ta 8", "act"),
)}


def dataset_dir(task: str) -> Path:
    return OUT / f"{task.lower()}_expert"


def run_dir(task: str, family: str) -> Path:
    return OUT / "runs" / f"{task.lower()}_{family}"


def robopolicy(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], check=True, cwd=REPO)


def cmd_record(task: str, episodes: int) -> None:
    robopolicy("record", f"output={dataset_dir(task)}", "device=expert", f"task={task}", f"num_episodes={episodes}",
               "seed=0")


def cmd_train(task: str, names: list[str], threads: int, minutes: float | None = None,
              steps: int | None = None) -> None:
    for name in names:
        overrides, budget = FAMILIES[name]
        minutes = minutes or budget
        out = run_dir(task, name)
        if (out / "policy").is_dir():
            print(f"{out}: trained already")
            continue
        if steps:
            overrides = [o for o in overrides if not o.startswith("steps=")] + [f"steps={steps}"]
        robopolicy("train", *overrides, *COMMON, f"dataset.root={dataset_dir(task)}", f"env.name={task}",
                   f"num_threads={threads}", f"time_budget_min={minutes}", f"output_dir={out}")


def training_minutes(run: Path) -> float | None:
    log = run / "train_log.csv"
    if not log.is_file():
        return None
    last = log.read_text().strip().splitlines()[-1].split(",")
    return float(last[6]) / 60 if last[6] else None


def cmd_eval(task: str, rows: list[str], episodes: int, force: bool) -> None:
    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.envs import arm_renderer_available, env_factory
    from robopolicy.sim.evaluate import evaluate

    RESULTS.mkdir(parents=True, exist_ok=True)
    videos = 2 if arm_renderer_available() else 0
    for row in rows:
        family = ROWS[row].run
        path = RESULTS / f"{task.lower()}_{row}.json"
        directory = run_dir(task, family) / "policy"
        if (path.exists() and not force) or not directory.is_dir():
            print(f"{row}: {'done' if path.exists() else 'not trained'}")
            continue
        keys = [f.key for f in load_policy(directory).config.input_features]
        result = evaluate(partial(load_row_policy, str(directory), ROWS[row]), n_episodes=episodes,
                          env_factory=env_factory(task, keys, render=videos > 0), n_workers=2, n_videos=videos,
                          max_steps=200 if task == "Lift" else 400, start_seed=100000,
                          output_dir=run_dir(task, family) / f"eval_{row}")
        report = result.to_dict()
        report.pop("episodes", None)
        report.update(task=task, row=row, label=ROWS[row].label, training_min=training_minutes(run_dir(task, family)),
                      mean_steps=sum(e.steps for e in result.episodes) / len(result.episodes), machine=machine())
        path.write_text(json.dumps(report, indent=2))
        print(row, result.summary())


def cmd_served(task: str, family: str, episodes: int, force: bool) -> None:
    from robopolicy.robots.closed_loop import run_served_episodes

    path = RESULTS / f"{task.lower()}_served_{family}.json"
    if path.exists() and not force:
        print(f"{path}: done")
        return
    out = run_served_episodes(str(run_dir(task, family) / "policy"), episodes, start_seed=100000, env=task,
                              max_steps=200 if task == "Lift" else 400)
    episodes_detail = out.pop("episodes")
    jitter = sorted(e["jitter_p99_us"] for e in episodes_detail if e["jitter_p99_us"] is not None)
    out.update(task=task, family=family, machine=machine(),
               deadline_misses=sum(e["deadline_misses"] for e in episodes_detail),
               safe_ticks=sum(e["safe_ticks"] for e in episodes_detail),
               latency_ms_p50_median=sorted(e["latency_ms_p50"] for e in episodes_detail if e["latency_ms_p50"])[
                   len(episodes_detail) // 2],
               jitter_p99_us_median=jitter[len(jitter) // 2] if jitter else None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items()}, indent=2))


def cmd_table() -> str:
    lines = ["| task | policy | success (95 % CI) | episodes | mean steps | chunk latency p50 (ms) | training (min) |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        lo, hi = r["success_ci95"]
        if "row" in r:
            lat = r.get("chunk_latency_ms", {}).get("p50")
            lines.append(f"| {r['task']} | {r['label']} | {r['success_rate']:.0%} ({lo:.0%}–{hi:.0%}) | "
                         f"{r['n_episodes']} | {r['mean_steps']:.0f} | {lat if lat is None else f'{lat:.1f}'} | "
                         f"{r['training_min'] or 0:.0f} |")
        else:
            lines.append(f"| {r['task']} | {r['family']} served (server + {r['control_hz']:.0f} Hz loop + bridge) | "
                         f"{r['success_rate']:.0%} ({lo:.0%}–{hi:.0%}) | {r['n_episodes']} | | "
                         f"{r['latency_ms_p50_median']:.1f} (obs→chunk) | |")
    table = "\n".join(lines)
    print(table)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["record", "train", "eval", "served", "table"])
    ap.add_argument("--task", default="Lift", choices=["Lift", "PickPlaceCan"])
    ap.add_argument("--only", default="", help="comma-separated families (train) or rows (eval)")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", type=float, help="train: time budget instead of the family's")
    ap.add_argument("--steps", type=int, help="train: step count instead of the family's")
    ap.add_argument("--run", default="flow", help="served: which trained family")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    if args.command == "record":
        cmd_record(args.task, 200 if args.episodes == 100 else args.episodes)
    elif args.command == "train":
        cmd_train(args.task, only or list(FAMILIES), args.threads, args.minutes, args.steps)
    elif args.command == "eval":
        cmd_eval(args.task, only or list(ROWS), args.episodes, args.force)
    elif args.command == "served":
        cmd_served(args.task, args.run, args.episodes, args.force)
    else:
        cmd_table()


if __name__ == "__main__":
    main()
