"""What one evaluation episode did, step by step: the data a rollout viewer draws.

Numpy only (no Rerun), so the evaluator can fill it in a worker process and hand it to a recorder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class RolloutTrace:
    """Step ``k`` executed ``actions[k]``, then the env showed ``frames[k + 1]`` with ``coverages[k]``.

    ``chunks`` holds each action chunk the policy predicted, as (step, chunk (T, A), offset): the
    chunk's row ``offset + i`` is the action planned for step ``step + i`` (offset is To - 1, the row
    aligned with the newest observation).
    """

    seed: int
    fps: int
    success_threshold: float
    frames: list[np.ndarray] = dataclasses.field(default_factory=list)  # env.render(): the start, then after each step
    actions: list[np.ndarray] = dataclasses.field(default_factory=list)
    coverages: list[float] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    inference_steps: list[int] = dataclasses.field(default_factory=list)  # steps whose select_action ran inference
    chunks: list[tuple[int, np.ndarray, int]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. env name, policy path

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool(self.coverages) and max(self.coverages) >= self.success_threshold


class ChunkTap:
    """Records every chunk ``policy.predict_chunk`` returns while active, without changing what it returns.

    Works with any policy whose ``select_action`` calls ``self.predict_chunk`` (the torch policies, the
    ONNX and C runtimes); a policy without one simply yields no chunks. The tap shadows the method on
    the instance and ``close()`` removes the shadow again.
    """

    def __init__(self, policy: Any, trace: RolloutTrace, current_step: Callable[[], int]):
        self.policy, self.trace, self.current_step = policy, trace, current_step
        config = getattr(policy, "config", None)
        self.offset = int(getattr(config, "n_obs_steps", None) or getattr(policy, "n_obs_steps", 1) or 1) - 1
        self.active = callable(getattr(policy, "predict_chunk", None)) and "predict_chunk" not in vars(policy)
        if self.active:
            original = policy.predict_chunk

            def tapped(*args: Any, **kwargs: Any) -> Any:
                chunk = original(*args, **kwargs)
                array = chunk.detach().cpu().numpy() if hasattr(chunk, "detach") else np.asarray(chunk)
                self.trace.chunks.append((self.current_step(), array[0].astype(np.float32), self.offset))
                return chunk

            policy.predict_chunk = tapped

    def close(self) -> None:
        if self.active:
            del self.policy.predict_chunk
            self.active = False
