"""Roll a policy out in simulation over many seeded episodes and summarize it with honest error bars.

Episode ``i`` uses seed ``start_seed + i`` for both the env reset and ``torch.manual_seed`` (as
Diffusion Policy evaluates), and every episode starts with ``policy.reset()``, so results depend on
the seeds only, never on how episodes are spread over worker processes.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

from robopolicy.sim import report
from robopolicy.sim.pusht import PUSHT_FPS, SUCCESS_COVERAGE
from robopolicy.viz.trace import ChunkTap, RolloutTrace

Z_95 = 1.959963984540054  # two-sided 95% standard-normal quantile


@runtime_checkable
class PolicyLike(Protocol):
    """What the evaluator needs from a policy (``robopolicy.policies.Policy`` satisfies it).

    Optionally a bool property ``needs_new_chunk``: True when the next ``select_action`` will run
    inference; the evaluator then reports those calls' latency separately. Optionally ``seed(int)``
    for a policy with its own random generator (the ONNX runtime); torch policies use the global seed.
    """

    def reset(self) -> None: ...

    def select_action(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


# ---- statistics -------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate; unlike the normal approximation it stays in [0, 1]
    and is not degenerate at 0/n or n/n, which is where small evaluations usually land."""
    if n <= 0:
        raise ValueError(f"need at least one trial for a success interval, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def mean_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float] | None:
    """Normal-approximation CI of a mean (None with fewer than two values: no spread estimate)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    half = z * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    x = np.asarray(latencies_ms, dtype=np.float64)
    if len(x) == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"n": len(x), "mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(x.max())}


# ---- results ----------------------------------------------------------------------------------


@dataclasses.dataclass
class EpisodeResult:
    seed: int
    max_coverage: float  # over the states reached after each action (the start state is not the policy's doing)
    final_coverage: float
    success: bool  # max_coverage >= success_threshold
    steps: int
    wall_s: float
    latencies_ms: list[float]  # every select_action call
    chunk_latencies_ms: list[float]  # calls made while needs_new_chunk was True
    video: str | None = None  # relative to the output directory

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_coverage": self.max_coverage,
            "final_coverage": self.final_coverage,
            "success": self.success,
            "steps": self.steps,
            "wall_s": self.wall_s,
            "latency_ms": latency_stats(self.latencies_ms),
            "chunk_latency_ms": latency_stats(self.chunk_latencies_ms),
            "video": self.video,
        }


@dataclasses.dataclass
class EvalResult:
    episodes: list[EpisodeResult]  # sorted by seed
    success_threshold: float
    max_steps: int
    n_workers: int
    wall_s: float
    # Aggregates, computed from the episodes.
    n_episodes: int = dataclasses.field(init=False)
    n_successes: int = dataclasses.field(init=False)
    success_rate: float = dataclasses.field(init=False)
    success_ci: tuple[float, float] = dataclasses.field(init=False)  # 95% Wilson
    mean_max_coverage: float = dataclasses.field(init=False)
    # Diffusion Policy's paper metric: max over the episode of min(coverage / threshold, 1).
    mean_max_reward: float = dataclasses.field(init=False)
    max_coverage_ci: tuple[float, float] | None = dataclasses.field(init=False)  # 95% normal approx.
    latency_ms: dict[str, Any] = dataclasses.field(init=False)  # all select_action calls
    chunk_latency_ms: dict[str, Any] = dataclasses.field(init=False)  # calls that ran inference

    def __post_init__(self) -> None:
        if not self.episodes:
            raise ValueError("an evaluation needs at least one episode")
        self.episodes = sorted(self.episodes, key=lambda e: e.seed)
        self.n_episodes = len(self.episodes)
        self.n_successes = sum(e.success for e in self.episodes)
        self.success_rate = self.n_successes / self.n_episodes
        self.success_ci = wilson_interval(self.n_successes, self.n_episodes)
        cover = [e.max_coverage for e in self.episodes]
        self.mean_max_coverage = float(np.mean(cover))
        self.mean_max_reward = float(np.mean(np.minimum(np.asarray(cover) / self.success_threshold, 1.0)))
        ci = mean_interval(cover)
        # Coverage lives in [0, 1]; the normal approximation does not know that with few episodes.
        self.max_coverage_ci = None if ci is None else (max(0.0, ci[0]), min(1.0, ci[1]))
        self.latency_ms = latency_stats([x for e in self.episodes for x in e.latencies_ms])
        self.chunk_latency_ms = latency_stats([x for e in self.episodes for x in e.chunk_latencies_ms])

    @property
    def seeds(self) -> list[int]:
        return [e.seed for e in self.episodes]

    def summary(self) -> str:
        """A few human-readable lines for the terminal."""
        lo, hi = self.success_ci
        lines = [
            f"success {self.n_successes}/{self.n_episodes} = {self.success_rate:.1%} (95% Wilson [{lo:.1%}, {hi:.1%}])",
            f"mean max coverage {self.mean_max_coverage:.3f}"
            + ("" if self.max_coverage_ci is None else " (95% CI [{:.3f}, {:.3f}])".format(*self.max_coverage_ci))
            + f"; mean max reward {self.mean_max_reward:.3f} (Diffusion Policy's metric)",
        ]
        for name, stats in (("select_action", self.latency_ms), ("chunk calls", self.chunk_latency_ms)):
            if stats["n"]:
                lines.append(
                    f"{name} latency ms: p50 {stats['p50']:.2f}  p90 {stats['p90']:.2f}  p99 {stats['p99']:.2f}  "
                    f"max {stats['max']:.2f}  (n={stats['n']})"
                )
        lines.append(f"{self.n_episodes} episodes in {self.wall_s:.1f} s with {self.n_workers} worker(s)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_episodes": self.n_episodes,
            "n_successes": self.n_successes,
            "success_rate": self.success_rate,
            "success_ci95": list(self.success_ci),  # Wilson score interval
            "mean_max_coverage": self.mean_max_coverage,
            "mean_max_reward": self.mean_max_reward,
            "max_coverage_ci95": None if self.max_coverage_ci is None else list(self.max_coverage_ci),
            "success_threshold": self.success_threshold,
            "max_steps": self.max_steps,
            "latency_ms": self.latency_ms,
            "chunk_latency_ms": self.chunk_latency_ms,
            "seeds": self.seeds,
            "n_workers": self.n_workers,
            "wall_s": self.wall_s,
            "episodes": [e.to_dict() for e in self.episodes],
        }


# ---- one episode ------------------------------------------------------------------------------


def _default_env() -> gym.Env:
    from robopolicy.sim.pusht import make_pusht_env

    return make_pusht_env(obs_mode="state")


def run_episode(
    policy: PolicyLike,
    env: gym.Env,
    seed: int,
    max_steps: int = 300,
    success_threshold: float = SUCCESS_COVERAGE,
    video_path: Path | None = None,
    video_fps: int | None = None,
    rollout_recorder: Callable[[RolloutTrace], None] | None = None,
) -> EpisodeResult:
    """One seeded rollout; ends at success (coverage >= threshold), env termination/truncation or max_steps.

    ``rollout_recorder``: called at the end with the episode's :class:`RolloutTrace` (frames, actions,
    predicted chunks, coverage, latency), e.g. to write a Rerun recording.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # scripted or numpy-based policies get the same reproducibility
    if callable(getattr(policy, "seed", None)):
        policy.seed(seed)
    policy.reset()
    obs, _ = env.reset(seed=seed)
    has_chunk_flag = hasattr(policy, "needs_new_chunk")
    latencies: list[float] = []
    chunk_latencies: list[float] = []
    coverages: list[float] = []
    video_fps = video_fps or int(env.metadata.get("render_fps") or PUSHT_FPS)
    writer = report.VideoWriter(video_path, fps=video_fps) if video_path is not None else None
    trace = RolloutTrace(seed, video_fps, success_threshold) if rollout_recorder is not None else None
    tap = ChunkTap(policy, trace, lambda: len(trace.actions)) if trace is not None else None
    start = time.perf_counter()
    try:
        if writer is not None or trace is not None:
            _show(env.render(), writer, trace)
        for step in range(max_steps):
            is_chunk = bool(policy.needs_new_chunk) if has_chunk_flag else False
            t0 = time.perf_counter()
            action = policy.select_action(obs)
            dt_ms = (time.perf_counter() - t0) * 1e3
            latencies.append(dt_ms)
            if is_chunk:
                chunk_latencies.append(dt_ms)
            action = np.asarray(action, dtype=np.float64)
            if action.shape != env.action_space.shape or not np.all(np.isfinite(action)):
                raise ValueError(
                    f"episode seed {seed}, step {step}: select_action returned {action.shape} {action}; "
                    f"expected finite values of shape {env.action_space.shape}"
                )
            obs, _, terminated, truncated, info = env.step(action)
            if "coverage" not in info:
                raise KeyError(
                    "the env must report info['coverage'] after each step (robopolicy.sim.pusht.make_pusht_env does)"
                )
            coverages.append(float(info["coverage"]))
            if trace is not None:
                trace.actions.append(action.astype(np.float32))
                trace.coverages.append(coverages[-1])
                trace.latencies_ms.append(dt_ms)
                if is_chunk:
                    trace.inference_steps.append(step)
            if writer is not None or trace is not None:
                _show(env.render(), writer, trace)
            if coverages[-1] >= success_threshold or terminated or truncated:
                break
    finally:
        if writer is not None:
            writer.close()
        if tap is not None:
            tap.close()
    if trace is not None:
        rollout_recorder(trace)
    max_coverage = max(coverages) if coverages else 0.0
    return EpisodeResult(
        seed=seed,
        max_coverage=max_coverage,
        final_coverage=coverages[-1] if coverages else 0.0,
        success=max_coverage >= success_threshold,
        steps=len(coverages),
        wall_s=time.perf_counter() - start,
        latencies_ms=latencies,
        chunk_latencies_ms=chunk_latencies,
    )


def _show(frame: np.ndarray, writer: report.VideoWriter | None, trace: RolloutTrace | None) -> None:
    if writer is not None:
        writer.write(frame)
    if trace is not None:
        trace.frames.append(np.asarray(frame))


# ---- worker processes -------------------------------------------------------------------------

# Each worker process builds its policy and env once, then runs whichever episodes it is handed.
_worker: dict[str, Any] = {}


def _init_worker(policy_factory: Callable[[], PolicyLike], env_factory: Callable[[], gym.Env] | None) -> None:
    torch.set_num_threads(1)  # n workers x m intra-op threads would oversubscribe the cores
    try:
        _worker["policy"] = policy_factory()
        _worker["env"] = (env_factory or _default_env)()
    except Exception:  # reported by the first task: a failing initializer only says "BrokenProcessPool"
        _worker["error"] = traceback.format_exc()


def _worker_episode(seed: int, kwargs: dict[str, Any]) -> EpisodeResult:
    if "error" in _worker:
        raise RuntimeError(f"evaluation worker setup failed (policy_factory or env_factory raised):\n{_worker['error']}")
    return run_episode(_worker["policy"], _worker["env"], seed, **kwargs)


def _check_picklable(name: str, obj: Any) -> None:
    try:
        pickle.dumps(obj)
    except Exception as e:
        raise TypeError(
            f"{name} must be picklable to reach worker processes (a module-level function or "
            f"functools.partial(robopolicy.policies.load_policy, path), not a lambda or closure), "
            f"or pass n_workers=1; pickling failed with: {e}"
        ) from e


# ---- the runner -------------------------------------------------------------------------------


def evaluate(
    policy_factory: Callable[[], PolicyLike],
    *,
    env_factory: Callable[[], gym.Env] | None = None,
    n_episodes: int = 50,
    start_seed: int = 100000,
    max_steps: int = 300,
    n_workers: int = 2,
    n_videos: int = 4,
    output_dir: Path | str | None = None,
    success_threshold: float = SUCCESS_COVERAGE,
    progress: bool = True,
    rollout_recorder: Callable[[RolloutTrace], None] | None = None,
) -> EvalResult:
    """Evaluate the policy built by ``policy_factory`` on episodes with seeds ``start_seed + i``.

    ``env_factory`` defaults to the PushT state env (``make_pusht_env("state")``); pass e.g.
    ``functools.partial(make_pusht_env, obs_mode="image")`` for image policies. With ``n_workers > 1``
    both factories must be picklable: each "spawn"ed worker calls them once and runs one thread.
    ``n_workers=1`` runs in this process (debuggers and tests). With ``output_dir``, writes
    ``eval_report.json``, ``eval_plot.png`` and ``videos/episode_<seed>.mp4`` for the first
    ``n_videos`` episodes (frames from ``env.render()``). ``rollout_recorder`` (picklable with workers) is
    called with the :class:`RolloutTrace` of each of those episodes (``robopolicy eval viz=true`` writes .rrd files).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
    if n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    seeds = [start_seed + i for i in range(n_episodes)]
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def task_kwargs(index: int) -> dict[str, Any]:
        record = out is not None and index < n_videos
        video = out / report.video_relpath(seeds[index]) if record else None
        return {"max_steps": max_steps, "success_threshold": success_threshold, "video_path": video,
                "rollout_recorder": rollout_recorder if record else None}

    n_workers = min(n_workers, n_episodes)
    results: list[EpisodeResult] = []
    start = time.perf_counter()
    with _EpisodeProgress(progress, n_episodes) as bar:
        if n_workers == 1:
            policy, env = policy_factory(), (env_factory or _default_env)()
            try:
                for i, seed in enumerate(seeds):
                    results.append(run_episode(policy, env, seed, **task_kwargs(i)))
                    bar.update(results[-1])
            finally:
                env.close()
        else:
            _check_picklable("policy_factory", policy_factory)
            _check_picklable("env_factory", env_factory)
            with ProcessPoolExecutor(
                max_workers=n_workers,
                mp_context=get_context("spawn"),  # fork would copy torch's thread pools and the caller's state
                initializer=_init_worker,
                initargs=(policy_factory, env_factory),
            ) as pool:
                pending: set[Future] = {pool.submit(_worker_episode, s, task_kwargs(i)) for i, s in enumerate(seeds)}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            results.append(future.result())
                            bar.update(results[-1])
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)  # fail fast instead of finishing the queue
                    raise

    video_seeds = set(seeds[:n_videos]) if out is not None else set()
    for r in results:
        r.video = report.video_relpath(r.seed) if r.seed in video_seeds else None
    result = EvalResult(
        episodes=results,
        success_threshold=success_threshold,
        max_steps=max_steps,
        n_workers=n_workers,
        wall_s=time.perf_counter() - start,
    )
    if out is not None:
        report.write_eval_artifacts(result, out)
    return result


class _EpisodeProgress:
    """A rich progress bar over episodes showing the running success count (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self.done = self.successes = 0

    def __enter__(self) -> _EpisodeProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("eval", total=self.total, status="")
        return self

    def update(self, episode: EpisodeResult) -> None:
        self.done += 1
        self.successes += episode.success
        if self.enabled:
            status = f"success {self.successes}/{self.done}"
            self._progress.update(self._task, advance=1, status=status)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()


__all__ = [
    "EpisodeResult",
    "EvalResult",
    "PolicyLike",
    "evaluate",
    "latency_stats",
    "mean_interval",
    "run_episode",
    "wilson_interval",
]
