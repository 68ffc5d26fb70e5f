"""Closed-loop episodes through the whole deployment path: policy server + control loop + simulated robot.

Each PushT episode runs in real time (10 Hz physics, up to ``max_steps`` steps), seeded ``start_seed + i`` like
``robopolicy eval``, so its success can be compared with direct evaluation of the same policy.
"""

from __future__ import annotations

import json
import time


def run_served_episodes(policy_dir: str, episodes: int, start_seed: int = 100000, blend: str = "rtc",
                 control_hz: float = 100.0, max_steps: int = 300, address: str = "tcp://127.0.0.1:0", verbose: bool = True) -> dict:
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
                if verbose:
                    print(json.dumps(results[-1]))
        finally:
            robot.disconnect()
    k = sum(r["success"] for r in results)
    return {"n_episodes": episodes, "success_rate": k / episodes, "success_ci95": wilson_interval(k, episodes),
            "mean_max_coverage": sum(r["max_coverage"] for r in results) / episodes, "episodes": results}
