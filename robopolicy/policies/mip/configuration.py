"""MIP hyper-parameters: the chunk network of flow matching, trained and sampled in two fixed steps.

Time convention as in flow matching: the network's t = 0 input is the empty chunk, t = t_star a chunk that is
t_star parts demonstration and (1 - t_star) parts noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from robopolicy.policies.chunk_backbone import ChunkBackboneConfig


@dataclass
class MipConfig(ChunkBackboneConfig):
    type: str = "mip"
    # The second step's input level: I = t_star * a + (1 - t_star) * z during training, t_star * a0 when acting.
    # 0.9 is the value the method is described with; the noise it injects is what makes the second step a
    # correction of the first rather than a copy of it.
    t_star: float = 0.9
    clip_sample: bool = True  # clamp the final chunk to the normalized action range
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.t_star < 1:
            raise ValueError(f"t_star must be in (0, 1), got {self.t_star}")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")
