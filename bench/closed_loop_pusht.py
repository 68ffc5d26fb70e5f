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
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_episodes(policy_dir: str, episodes: int, start_seed: int = 100000, blend: str = "rtc",
                 control_hz: float = 100.0, max_steps: int = 300, address: str = "tcp://127.0.0.1:0") -> dict:
    import torch

    from robopolicy.deploy.adapter import load_policy_adapter
    from robopolicy.deploy.client import ControlLoop, ControlLoopConfig
    from robopolicy.deploy.server import PolicyServer
    from robopolicy.robots.sim_pusht import SimPushTRobot
    from robopolicy.sim.evaluate import wilson_interval

    torch.set_num_threads(1)
    adapter = load_policy_adapter(policy_dir)
    results = []
    with PolicyServer(adapter, address=address, status_every_s=0) as srv:
        robot = SimPushTRobot(seed=start_seed, max_episode_steps=max_steps, max_runtime_s=episodes * (max_steps / 10 + 5) + 30)
        robot.connect()
        try:
            for i in range(episodes):
                seed = start_seed + i
                if i > 0:
                    robot.reset(seed)
                adapter.reset()
                loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=control_hz, blend=blend))
                t0 = time.monotonic()
                summary = loop.run(max_steps / 10 + 3, until=lambda lp: bool(lp.state and lp.state.info.get("done")))
                loop.close()
                info = robot.read_state().info
                results.append({"seed": seed, "success": bool(info["max_coverage"] >= 0.95),
                                "max_coverage": info["max_coverage"], "steps": info["steps"],
                                "wall_s": time.monotonic() - t0, "deadline_misses": summary["deadline_misses"],
                                "latency_ms_p50": summary["latency_ms_p50"], "safe_ticks": summary["safe_ticks"]})
                print(json.dumps(results[-1]))
        finally:
            robot.disconnect()
    k = sum(r["success"] for r in results)
    return {"n_episodes": episodes, "success_rate": k / episodes, "success_ci95": wilson_interval(k, episodes),
            "mean_max_coverage": sum(r["max_coverage"] for r in results) / episodes, "episodes": results}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--start-seed", type=int, default=100000)
    ap.add_argument("--blend", default="rtc", choices=["rtc", "ensemble", "replace"])
    ap.add_argument("--control-hz", type=float, default=100.0)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--direct", action="store_true", help="also run robopolicy.sim.evaluate on the same seeds")
    args = ap.parse_args()
    out = {"served": run_episodes(args.policy, args.episodes, args.start_seed, args.blend, args.control_hz, args.max_steps)}
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
