"""Closed-loop PushT through server + control loop, against direct evaluation of the same policy.

    python bench/closed_loop_pusht.py --policy DIR --episodes N [--blend rtc] [--control-hz 100] [--direct]

Each episode runs in real time (10 Hz physics, up to --max-steps steps = 30 s at 300), seeds
``start_seed + i`` like ``robopolicy eval``. With ``--direct`` the same seeds are also evaluated
with ``robopolicy.sim.evaluate`` (synchronous, no latency) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    from robopolicy.robots.closed_loop import run_served_episodes

    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--start-seed", type=int, default=100000)
    ap.add_argument("--blend", default="rtc", choices=["rtc", "ensemble", "replace"])
    ap.add_argument("--control-hz", type=float, default=100.0)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--direct", action="store_true", help="also run robopolicy.sim.evaluate on the same seeds")
    args = ap.parse_args()
    out = {"served": run_served_episodes(args.policy, args.episodes, args.start_seed, args.blend, args.control_hz, args.max_steps)}
    if args.direct:
        from functools import partial

        from robopolicy.policies.registry import load_policy
        from robopolicy.sim.evaluate import evaluate
        from robopolicy.sim.pusht import make_pusht_env

        r = evaluate(partial(load_policy, args.policy), env_factory=partial(make_pusht_env, obs_mode="state"),
                     n_episodes=args.episodes, start_seed=args.start_seed, max_steps=args.max_steps, n_workers=1,
                     n_videos=0).to_dict()
        out["direct"] = {k: r[k] for k in ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage")}
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "episodes"} for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
