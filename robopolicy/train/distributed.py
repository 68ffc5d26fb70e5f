"""Data-parallel training under ``torchrun``: the process group, each rank's batch, and rank-0-only work.

``torchrun`` puts RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT in every worker's environment; only then
does the trainer call :func:`setup`. A plain ``robopolicy train`` runs no torch.distributed code.

How a step is split, and why a W-rank run equals the 1-process run:

* ``batch_size`` is the *global* batch B (it must divide by W). Every rank holds the same index generator
  (seeded with ``seed``, checkpointed as ``rng.generator``) and draws the same B window ids per step, as the
  1-process trainer does; rank r trains on the r-th contiguous slice of B/W of them: its shard of the step's
  windows. DDP averages the gradients of the W slice means, which is the gradient of the mean over all B.
* Randomness inside a rank's loss (diffusion noise and timesteps, observation noise, dropout) comes from
  generators re-derived every step from (seed, step, rank), so the index generator draws indices only, and a
  resumed run needs no per-rank state: rank r's generator for step s is the same whoever resumes.

So for a loss that draws no randomness (the MLP family, no observation noise) a W-rank run is the 1-process
run with the same B, up to float reduction order. For a stochastic loss every rank trains on the same windows
as the 1-process run would, with its own, equally valid noise draws.

Resume: model, optimizer, EMA, LR schedule, step and the index generator are restored from rank 0's
checkpoint, which every rank reads (``output_dir`` must be on a filesystem every node sees). With the same W the
run continues bit for bit; with another W it draws the same windows at each step and re-derives the per-rank
generators from (seed, step, rank), so a randomness-free loss continues exactly up to float reduction order
and a stochastic loss continues with other (equally valid) noise. Moving between a plain run and a torchrun
run also works: a plain run draws everything from the index generator, as it always did.

Evaluation (and validation, logs, checkpoints, EMA) run on rank 0 only. While rank 0 evaluates, the other
ranks wait at a barrier on a separate gloo group whose timeout is ``dist_eval_timeout_min``; the training
collectives keep the short ``dist_timeout_min``, so a dead or stuck rank still fails the job quickly.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from robopolicy.data.sampler import WindowSampler

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True when this process is a torchrun worker (or was started like one)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, step, rank, purpose): nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    train_group: dist.ProcessGroup | None  # the training collectives: short timeout, so a dead rank fails the job
    wait_group: dist.ProcessGroup | None  # gloo, long timeout: where ranks wait for rank 0's evaluation

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_rank_batch(self, batch_size: int) -> int:
        return batch_size // self.world_size

    def sample(self, sampler: WindowSampler, batch_size: int, index_generator: torch.Generator) -> dict[str, Tensor]:
        """This rank's slice of the global batch: the B ids a 1-process run draws, cut into W contiguous parts."""
        ids = sampler.draw_ids(batch_size, index_generator)  # as WindowSampler.sample
        n = self.per_rank_batch(batch_size)
        return sampler.get(ids[self.rank * n : (self.rank + 1) * n])

    def step_generator(self, seed: int, step: int) -> torch.Generator:
        """This rank's generator for the loss's noise at ``step``; also reseeds torch's global RNG (dropout)."""
        torch.manual_seed(derived_seed(seed, step, self.rank, 1))
        return torch.Generator().manual_seed(derived_seed(seed, step, self.rank, 0))

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over ranks (for the logged loss: the mean over the global batch)."""
        total = value.detach().float().reshape(1).clone()
        dist.all_reduce(total, group=self.train_group)
        return total[0] / self.world_size

    def all_true(self, flag: bool) -> bool:
        """One decision for every rank (e.g. 'within the time budget'), so no rank trains a step the others skip."""
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.train_group)
        return bool(value.item())

    def wait_for_main(self) -> None:
        """Every rank calls this at the same point (after building its trainer, after rank 0's evaluation): the
        long timeout covers whatever rank 0 (or a slow node) does meanwhile."""
        dist.barrier(group=self.wait_group)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device, batch_size: int, timeout_min: float, eval_timeout_min: float) -> DistContext:
    """Join the torchrun job: nccl for CUDA (each rank on cuda:LOCAL_RANK), gloo on the CPU."""
    rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is the global batch and must divide by the number of ranks "
                         f"(WORLD_SIZE={world_size})")
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"device={device} under torchrun: use device=cuda or auto (rank r takes cuda:LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank}, but this node has {torch.cuda.device_count()} CUDA GPU(s): "
                               f"start at most that many processes per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # The default group (rendezvous, setup) and the waiting group get the long timeout: nodes start, and load
    # their data, at their own pace. The training collectives run on a group with the short one.
    dist.init_process_group(backend, timeout=timedelta(minutes=eval_timeout_min))
    train_group = dist.new_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    wait_group = dist.new_group(backend="gloo", timeout=timedelta(minutes=eval_timeout_min))
    return DistContext(rank, world_size, local_rank, device, train_group, wait_group)


class _TrainingLoss(nn.Module):
    """DDP all-reduces the gradients of what its forward computes: here, the policy's training loss."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        return self.policy.compute_loss(batch, generator=generator)


def wrap(policy: nn.Module, ctx: DistContext) -> DistributedDataParallel:
    """``policy.compute_loss`` behind DDP. Rank 0's weights are broadcast once; the policies' buffers are
    constants (normalization, image statistics), so they are not re-broadcast every step."""
    ctx.wait_for_main()  # every rank has built its trainer (loading data takes each its own time)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # torch 2.13 renamed broadcast_buffers (still accepted, with a warning); older releases know only that name.
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(_TrainingLoss(policy), device_ids=device_ids, process_group=ctx.train_group,
                                   **no_buffer_sync)
