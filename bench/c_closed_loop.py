"""PushT in closed loop through the C export: torch vs ONNX Runtime vs the C code (CPolicy), same seeds.

    python bench/c_closed_loop.py [--minutes 22] [--steps 30000] [--episodes 200] [--root outputs/bench/c_closed_loop]

Trains the L1 MLP with observation noise of section 1b (512 x 3, `obs_noise_std=0.02`) on the bundled PushT demos
within the time budget (skipped when the run exists), exports it to ONNX and to C, and evaluates the three on the
same seeds with the same evaluator. The MLP is deterministic, but the backends round differently (1e-7), and
PushT's contacts amplify that into a different rollout in some episodes. The table reports each backend's success
(Wilson 95 % interval), coverage and chunk latency, and how many episodes reached the same max coverage as torch
(to 1e-3).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robopolicy.cli import cmd_eval, cmd_export, cmd_train  # noqa: E402
from robopolicy.configs import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=22.0)
    ap.add_argument("--steps", type=int, default=30000, help="sized so the cosine schedule ends near the budget")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--root", default="outputs/bench/c_closed_loop")
    ap.add_argument("--out", default="bench/results/c_closed_loop.json")
    args = ap.parse_args()
    root = REPO / args.root
    run = root / "mlp"
    if not (run / "policy").is_dir():
        cmd_train(load_config("train", [
            "policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.02",
            f"steps={args.steps}", "lr=1e-3", "batch_size=256", f"time_budget_min={args.minutes}",
            "warmup_steps=500", "save_every=0", "log_every=100", "progress=false", f"output_dir={run}"]))
    exported = {fmt: cmd_export(load_config("export", [f"checkpoint={run}", f"format={fmt}", f"output={root / fmt}"]))
                for fmt in ("onnx", "c")}
    reports = {}
    for name, checkpoint in (("torch", run), ("onnx", exported["onnx"]), ("c", exported["c"])):
        reports[name] = cmd_eval(load_config("eval", [f"checkpoint={checkpoint}", f"n_episodes={args.episodes}",
                                                      "n_videos=0", f"output_dir={root / ('eval_' + name)}"]))
    reference = [e["max_coverage"] for e in reports["torch"]["episodes"]]
    rows = {}
    for name, report in reports.items():
        same = sum(abs(a - b) < 1e-3 for a, b in zip(reference, (e["max_coverage"] for e in report["episodes"])))
        rows[name] = {"success_rate": report["success_rate"], "success_ci95": report["success_ci95"],
                      "mean_max_coverage": report["mean_max_coverage"], "chunk_latency_ms": report["chunk_latency_ms"],
                      "episodes_matching_torch": same, "n_episodes": report["n_episodes"]}
    (REPO / args.out).write_text(json.dumps({"run": str(run), "episodes": args.episodes, "rows": rows}, indent=2))
    print("| backend | success (95 % CI) | mean max coverage | chunk p50 / p99 ms | episodes matching torch |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        lo, hi = r["success_ci95"]
        lat = r["chunk_latency_ms"]
        print(f"| {name} | {r['success_rate']:.1%} ({lo:.1%}–{hi:.1%}) | {r['mean_max_coverage']:.3f} | "
              f"{lat['p50']:.3f} / {lat['p99']:.3f} | {r['episodes_matching_torch']}/{r['n_episodes']} |")


if __name__ == "__main__":
    main()
