"""Evaluation environments by name, so ``eval`` and the trainer serve PushT and the robosuite arms alike.

``env.name`` in the configs is ``pusht``, an arm task (``Lift``, ``PickPlaceCan``, ``Stack``) or a quadrotor
task (``quadrotor_hover``, ``quadrotor_waypoint``, ``quadrotor_figure8``). The factory is a ``functools.partial``
of a module-level function, so evaluation workers ("spawn") can pickle it. Quadrotors are evaluated
vectorized (:func:`evaluate_quadrotor`: one batched policy call per step for a thousand drones), not
through the per-episode gym runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import gymnasium as gym

ARM_TASKS = ("Lift", "PickPlaceCan", "Stack")
QUADROTOR_ENVS = ("quadrotor_hover", "quadrotor_waypoint", "quadrotor_figure8")
NEWTON_ENVS = ("newton_push",)  # Newton (Warp) worlds, evaluated vectorized: evaluate_newton
ENV_NAMES = ("pusht", *ARM_TASKS, *QUADROTOR_ENVS, *NEWTON_ENVS)
ARM_IMAGE_PREFIX = "observation.images."


def check_env_name(name: str) -> str:
    if name not in ENV_NAMES:
        raise ValueError(f"env.name={name!r} is not an evaluation environment (expected one of {list(ENV_NAMES)})")
    return name


def _make_arm_env(task: str, cameras: tuple[str, ...], render: bool) -> gym.Env:
    from robopolicy.sim.robosuite_env import make_robosuite_env

    return make_robosuite_env(task, cameras=cameras, offscreen_render=render)


def env_factory(name: str, input_keys: Iterable[str], render: bool = False) -> Callable[[], gym.Env]:
    """A picklable factory for the env that provides every observation key the policy reads.

    ``render`` asks arm envs for an offscreen renderer (rollout videos); PushT always renders.
    """
    keys = list(input_keys)
    if check_env_name(name) in QUADROTOR_ENVS:
        raise ValueError(f"{name} is evaluated vectorized: use robopolicy.sim.envs.evaluate_quadrotor")
    if name in NEWTON_ENVS:
        raise ValueError(f"{name} is evaluated vectorized: use robopolicy.sim.envs.evaluate_newton")
    if name == "pusht":
        from robopolicy.sim.pusht import make_pusht_env, pusht_obs_mode_for

        return partial(make_pusht_env, obs_mode=pusht_obs_mode_for(keys))
    cameras = tuple(k[len(ARM_IMAGE_PREFIX):] for k in keys if k.startswith(ARM_IMAGE_PREFIX))
    return partial(_make_arm_env, name, cameras, render)


def arm_renderer_available() -> bool:
    """Whether MuJoCo can render offscreen here (EGL or OSMesa); without it arm rollouts have no videos."""
    try:
        env = _make_arm_env("Lift", (), True)
    except Exception:  # noqa: BLE001 - any failure to build a GL context means "no videos"
        return False
    try:
        env.reset(seed=0)
        env.render()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        env.close()


__all__ = ["ARM_TASKS", "ENV_NAMES", "NEWTON_ENVS", "arm_renderer_available", "check_env_name", "env_factory",
           "evaluate_newton"]


def policy_fps(policy) -> float | None:
    """The control rate a policy was trained at: ``config.fps`` (torch policies) or ``fps`` (ONNX artifacts)."""
    fps = getattr(getattr(policy, "config", None), "fps", None) or getattr(policy, "fps", None)
    return float(fps) if fps else None


def evaluate_quadrotor(policy, name: str, n_episodes: int = 1024, seed: int = 0, n_envs: int = 1024,
                       progress: bool = False, sim_hz: float | None = None) -> dict:
    """Success / crash rates (Wilson 95 % intervals) and tracking RMSE of ``policy`` on a quadrotor task.

    The simulator steps at ``sim_hz``, by default the rate of the demonstrations the policy learned from
    (its ``fps``; 100 Hz for policies that do not record one): a policy trained on 100 Hz demos expects
    10 ms between its actions, one trained on the on-board 500 Hz loop expects 2 ms.
    """
    from robopolicy.sim.quadrotor import QuadrotorConfig, evaluate_policy, summarize

    if check_env_name(name) not in QUADROTOR_ENVS:
        raise ValueError(f"{name} is not a quadrotor task (expected one of {list(QUADROTOR_ENVS)})")
    if sim_hz is None:
        sim_hz = policy_fps(policy) or QuadrotorConfig.sim_hz
    stats = evaluate_policy(policy, name.removeprefix("quadrotor_"), n_episodes=n_episodes, n_envs=n_envs, seed=seed,
                            config=QuadrotorConfig(sim_hz=float(sim_hz)), progress=progress)
    out = summarize(stats)
    out["n_episodes"] = out.pop("episodes")
    out["sim_hz"] = float(sim_hz)
    out["crash_reasons"] = {r: sum(s.crash_reason == r for s in stats) for r in sorted({s.crash_reason for s in stats} - {""})}
    return out


def evaluate_newton(policy, name: str, n_episodes: int = 1024, seed: int = 1_000_000, n_envs: int = 1024,
                    max_steps: int | None = None) -> dict:
    """Success rate (Wilson 95 % interval) of ``policy`` on a Newton task, ``n_envs`` worlds stepped together."""
    if check_env_name(name) not in NEWTON_ENVS:
        raise ValueError(f"{name} is not a Newton task (expected one of {list(NEWTON_ENVS)})")
    from robopolicy.sim.newton_env import MAX_STEPS, evaluate_policy

    return evaluate_policy(policy, n_episodes=n_episodes, n_envs=n_envs, seed=seed, max_steps=max_steps or MAX_STEPS)
