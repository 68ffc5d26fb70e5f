"""Closed-loop episodes through the whole deployment path: policy server + control loop + simulated robot.

PushT runs in its own process in real time (10 Hz physics); the arm tasks (``Lift``, ``PickPlaceCan``) run
robosuite behind the reference arm bridge in its own process (20 Hz control), driven through
:class:`~robopolicy.robots.sim_arm.BridgeArm`; the quadrotor tasks (``quadrotor_hover``, ...) run one L2F
drone in its own process at 500 Hz (:class:`~robopolicy.robots.sim_quadrotor.SimQuadrotorRobot`). Each episode is seeded ``start_seed + i`` like ``robopolicy eval``
and ends at success or after ``max_steps`` robot steps, so its success can be compared with direct evaluation.
"""

from __future__ import annotations

import json
import time


def _pusht_robot(start_seed: int, episodes: int, max_steps: int):
    from robopolicy.robots.sim_pusht import SimPushTRobot

    robot = SimPushTRobot(seed=start_seed, max_episode_steps=max_steps,
                          max_runtime_s=episodes * (max_steps / 10 + 5) + 30)
    return robot, 10.0


def _arm_robot(task: str, start_seed: int, episodes: int, max_steps: int):
    from robopolicy.robots.sim_arm import SimArm

    robot = SimArm("robosuite", rate_hz=20.0, max_runtime_s=episodes * (max_steps / 20 + 10) + 60,
                   backend_kwargs={"task": task, "seed": start_seed})
    return robot, 20.0


def _quadrotor_robot(task: str, start_seed: int, episodes: int, episode_s: float | None, safe_mode: str):
    from robopolicy.robots.sim_quadrotor import QUADROTOR_HZ, SimQuadrotorRobot
    from robopolicy.sim.quadrotor import QuadrotorConfig

    length = episode_s or QuadrotorConfig(task=task).episode_steps / QuadrotorConfig(task=task).sim_hz
    robot = SimQuadrotorRobot(task, seed=start_seed, episode_s=episode_s, safe_mode=safe_mode,
                              max_runtime_s=episodes * (length + 5) + 30)
    return robot, QUADROTOR_HZ, length


def run_served_episodes(policy_dir: str, episodes: int, start_seed: int = 100000, blend: str = "rtc",
                        control_hz: float | None = None, max_steps: int = 300, address: str = "tcp://127.0.0.1:0",
                        verbose: bool = True, env: str = "pusht", episode_s: float | None = None,
                        safe_mode: str = "hover") -> dict:
    """Success over ``episodes`` served episodes; ``control_hz`` defaults to 100 (PushT) or 500 (arms, quadrotors).

    Quadrotor episodes last the task's length (or ``episode_s``) of real time; ``safe_mode`` is the
    simulated drone's own safe behaviour (``hover`` | ``motors_off``).
    """
    import torch

    from robopolicy.deploy.adapter import load_policy_adapter
    from robopolicy.deploy.client import ControlLoop, ControlLoopConfig
    from robopolicy.deploy.server import PolicyServer
    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.envs import check_env_name
    from robopolicy.sim.evaluate import wilson_interval

    is_quad = check_env_name(env).startswith("quadrotor_")
    is_arm = env != "pusht" and not is_quad
    control_hz = control_hz or (100.0 if env == "pusht" else 500.0)
    torch.set_num_threads(1)
    adapter = load_policy_adapter(policy_dir, load_checkpoint=load_policy)
    results = []
    with PolicyServer(adapter, address=address, status_every_s=0) as srv:
        if is_quad:
            robot, robot_hz, run_s = _quadrotor_robot(env.removeprefix("quadrotor_"), start_seed, episodes, episode_s,
                                                      safe_mode)  # the drone's own episode length ends it ("done")
        elif is_arm:
            robot, robot_hz = _arm_robot(env, start_seed, episodes, max_steps)
        else:
            robot, robot_hz = _pusht_robot(start_seed, episodes, max_steps)
        if not is_quad:
            run_s = max_steps / robot_hz
        robot.connect()
        try:
            for i in range(episodes):
                seed = start_seed + i
                if i > 0 or is_arm or is_quad:
                    robot.reset(seed)
                adapter.reset()
                loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=control_hz, blend=blend))
                t0 = time.monotonic()
                if is_arm:  # the bridge runs in real time: stop at success or after max_steps env steps
                    done = lambda lp: bool(lp.state and (lp.state.info.get("is_success")  # noqa: E731
                                                         or lp.state.info.get("steps", 0) >= max_steps))
                else:
                    done = lambda lp: bool(lp.state and lp.state.info.get("done"))  # noqa: E731
                summary = loop.run(run_s + 10, until=done)
                final = loop.state
                loop.close()
                wall = time.monotonic() - t0
                if is_quad:
                    info = final.info if final else {}
                    success, score, steps = bool(info.get("success")), float(info.get("success", 0.0)), info.get("steps", -1)
                    extra = {k: info.get(k) for k in ("crash", "crash_reason", "rmse", "safe_entries", "watchdog_trips",
                                                       "late_p99_us", "late_max_us")}
                    extra["sim_overruns"] = info.get("overruns")
                elif is_arm:
                    success = bool(final and final.info.get("is_success"))
                    score, steps = float(success), int(final.info.get("steps", -1)) if final else -1
                else:
                    info = robot.read_state().info
                    success, score, steps = bool(info["max_coverage"] >= 0.95), info["max_coverage"], info["steps"]
                results.append({"seed": seed, "success": success, "max_coverage": score, "steps": steps,
                                "wall_s": wall, "deadline_misses": summary["deadline_misses"],
                                "latency_ms_p50": summary["latency_ms_p50"], "safe_ticks": summary["safe_ticks"],
                                "jitter_p99_us": summary["period"]["jitter_p99_us"], "overruns": summary["period"]["overruns"],
                                **(extra if is_quad else {})})
                if verbose:
                    print(json.dumps(results[-1]))
        finally:
            robot.disconnect()
    k = sum(r["success"] for r in results)
    return {"env": env, "control_hz": control_hz, "n_episodes": episodes, "success_rate": k / episodes,
            "success_ci95": wilson_interval(k, episodes),
            "mean_max_coverage": sum(r["max_coverage"] for r in results) / episodes, "episodes": results}
