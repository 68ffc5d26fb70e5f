"""Data-parallel training under torchrun, on the CPU with gloo and 2 ranks: the 2-rank run equals the 1-process run,
a killed rank fails the job (no hang) and resume continues, a 2-rank checkpoint serves a 1-process run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robopolicy.configs import load_config
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies import load_policy
from robopolicy.train import distributed
from robopolicy.train.checkpoint import STATE_JSON, STATE_TENSORS, latest_checkpoint, list_checkpoints
from robopolicy.train.trainer import Trainer
from tests.conftest import linear_mapping_episodes, write_dataset

STEPS, BATCH = 8, 16
TINY_MLP = ["policy=mlp", "policy.hidden_dims=[32,32]", "policy.n_obs_steps=2", "policy.horizon=4",
            "policy.n_action_steps=2"]
TINY_DIFFUSION = ["policy.down_dims=[32,64]", "policy.horizon=4", "policy.n_obs_steps=1", "policy.n_action_steps=2"]


def train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [f"dataset.root={dataset}", "dataset.observation_keys=[observation.state]", f"output_dir={out}",
            "progress=false", "num_threads=1", "lr=3e-3", "warmup_steps=2", "log_every=1", *extra]


def torchrun(args: list[str], nproc: int = 2) -> list[str]:
    """``torchrun --standalone`` (a free port on loopback) running ``robopolicy train``; no restarts."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "robopolicy.cli", "train", *args]


def run_torchrun(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    done = subprocess.run(torchrun(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_log(run_dir: Path) -> np.ndarray:
    return np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)


def checkpoint_state(run_dir: Path, step: int) -> tuple[dict[str, torch.Tensor], dict]:
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    return load_file(str(path / STATE_TENSORS)), json.loads((path / STATE_JSON).read_text())


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """One 2-rank torchrun of the tiny MLP (global batch 16, so 8 windows per rank), shared by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    dataset = write_dataset(root / "lowdim", linear_mapping_episodes())
    # (a time budget that never runs out: the ranks still agree on it every step)
    extra = [*TINY_MLP, "time_budget_min=60", f"batch_size={BATCH}", f"steps={STEPS}", f"save_every={STEPS // 2}"]
    run_torchrun(train_args(dataset, root / "two_ranks", *extra))
    return dataset, root / "two_ranks", extra


def test_rank_slices_make_up_the_one_process_batch():
    """Each rank's slice is its part of the batch a 1-process run draws from the same generator state."""
    data = {"s": torch.arange(40.0)[:, None], "a": torch.arange(40.0)[:, None]}
    sampler = WindowSampler(data, np.array([[0, 20], [20, 40]]), ["s"], "a", 1, 2, 1)
    whole = sampler.sample(12, generator=torch.Generator().manual_seed(3))
    parts = [distributed.DistContext(rank, 3, rank, torch.device("cpu"), None, None).sample(
        sampler, 12, torch.Generator().manual_seed(3)) for rank in range(3)]
    for key in whole:
        assert all(len(p[key]) == 4 for p in parts)
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), whole[key], rtol=0, atol=0)


def test_a_global_batch_that_does_not_split_evenly_is_refused(lowdim_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"batch_size=16 is the global batch .* \(WORLD_SIZE=3\)"):
        Trainer(load_config("train", train_args(lowdim_dataset, tmp_path / "run", *TINY_MLP, "batch_size=16")))
    assert not torch.distributed.is_initialized()


def test_step_generators_differ_by_rank_and_step_and_repeat():
    ctx = lambda rank: distributed.DistContext(rank, 2, rank, torch.device("cpu"), None, None)  # noqa: E731
    draw = lambda rank, step: torch.randn(4, generator=ctx(rank).step_generator(0, step))  # noqa: E731
    torch.testing.assert_close(draw(1, 5), draw(1, 5), rtol=0, atol=0)  # re-derived on resume: the same stream
    assert not torch.allclose(draw(0, 5), draw(1, 5)) and not torch.allclose(draw(1, 5), draw(1, 6))


def test_two_ranks_with_half_batches_match_one_process(two_rank_run, tmp_path):
    """Same per-step losses and the same weights, optimizer state and EMA after k steps, up to float reduction order."""
    dataset, two_ranks, extra = two_rank_run
    one = Trainer(load_config("train", train_args(dataset, tmp_path / "one", *extra)))
    assert one.dist is None and "RANK" not in os.environ  # the plain path
    one.fit()
    assert not torch.distributed.is_initialized()
    np.testing.assert_allclose(read_log(two_ranks)["loss"], read_log(tmp_path / "one")["loss"], rtol=1e-5, atol=0)
    for step in (STEPS // 2, STEPS):
        two, two_meta = checkpoint_state(two_ranks, step)
        ref, ref_meta = checkpoint_state(tmp_path / "one", step)
        assert (two_meta["world_size"], ref_meta["world_size"]) == (2, 1)
        assert two.keys() == ref.keys()
        for key in (k for k in ref if k.startswith(("model.", "optim.", "ema."))):
            torch.testing.assert_close(two[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    first, last = checkpoint_state(two_ranks, STEPS // 2)[0], checkpoint_state(two_ranks, STEPS)[0]
    moved = max((first[k] - last[k]).abs().max().item() for k in first if k.startswith("model."))
    assert moved > 1e-3  # the weights did train: equal weights are not equal initializations
    summary = json.loads((two_ranks / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_size"] == BATCH


def test_a_two_rank_checkpoint_loads_and_resumes_in_one_process(two_rank_run, tmp_path):
    """The 2-rank run's checkpoint and policy give a 1-process run identical actions, and it trains on from there."""
    dataset, two_ranks, extra = two_rank_run
    run = shutil.copytree(two_ranks, tmp_path / "run")
    state, _ = checkpoint_state(run, STEPS)
    resumed = Trainer(load_config("train", train_args(dataset, run, *extra[:-2], f"steps={STEPS + 2}", "resume=true")))
    assert resumed.dist is None and resumed.step == STEPS
    for key, value in resumed.policy.state_dict().items():
        torch.testing.assert_close(value, state[f"model.{key}"], rtol=0, atol=0)
    obs = {"observation.state": torch.tensor([[[0.5, -0.5], [0.4, -0.2]], [[-0.8, 0.2], [0.1, 0.9]]])}
    resumed._sync_ema()
    chunks = [p.eval().predict_chunk(obs) for p in
              (resumed.ema_policy, load_policy(run / "policy"), load_policy(latest_checkpoint(run / "checkpoints") / "policy"))]
    for chunk in chunks[1:]:
        torch.testing.assert_close(chunk, chunks[0], rtol=0, atol=0)
    assert not torch.allclose(resumed.ema_policy.predict_chunk(obs), resumed.policy.eval().predict_chunk(obs))
    resumed.fit()
    assert json.loads((run / "train_summary.json").read_text())["steps"] == STEPS + 2


def test_resume_is_bitwise_on_the_same_world_size_and_within_float_tolerance_on_another(two_rank_run, tmp_path):
    """From the 2-rank run's step-4 checkpoint: a 2-rank resume reaches the uninterrupted run's step 8 bit for bit; a
    1-process resume (the MLP's loss draws no noise) reaches it up to float reduction order."""
    dataset, two_ranks, extra = two_rank_run
    straight, _ = checkpoint_state(two_ranks, STEPS)
    for ranks in (2, 1):
        run = shutil.copytree(two_ranks, tmp_path / f"resumed_on_{ranks}")
        shutil.rmtree(run / "checkpoints" / f"step-{STEPS:08d}")
        (run / "checkpoints" / "LATEST").write_text(f"step-{STEPS // 2:08d}")
        args = train_args(dataset, run, f"steps={STEPS}", "resume=true")
        if ranks == 2:
            run_torchrun(args)
        else:
            resumed = Trainer(load_config("train", args))
            assert resumed.step == STEPS // 2
            resumed.fit()
        state, meta = checkpoint_state(run, STEPS)
        assert meta["world_size"] == ranks
        tolerance = {"rtol": 0, "atol": 0} if ranks == 2 else {"rtol": 1e-5, "atol": 1e-6}
        for key in (k for k in straight if k.startswith(("model.", "optim.", "ema.", "rng.generator"))):
            torch.testing.assert_close(state[key], straight[key], **tolerance, msg=f"{ranks} rank(s): {key}")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rank_of(pid: int) -> int | None:
    env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
               if "=" in v)
    return int(env["RANK"]) if "RANK" in env else None


def _running(pid: int) -> bool:
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text()  # a zombie has exited
    except FileNotFoundError:
        return False


def test_killing_a_rank_fails_the_job_and_resume_continues(lowdim_dataset, tmp_path):
    """kill -9 of rank 1 ends the whole job promptly with an error (rank 0 does not wait on a dead peer), and a
    2-rank resume from the last checkpoint (a diffusion policy: per-rank noise) finishes the run."""
    out = tmp_path / "run"
    args = train_args(lowdim_dataset, out, *TINY_DIFFUSION, "batch_size=16", "save_every=5", "keep_checkpoints=2",
                      "dist_timeout_min=2")
    job = subprocess.Popen(torchrun([*args, "steps=100000", "compile=false"]),  # (auto would compile first) stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list_checkpoints(out / "checkpoints")) < 2 and job.poll() is None:
            time.sleep(0.2)
        assert len(list_checkpoints(out / "checkpoints")) >= 2, job.stderr.read().decode()[-3000:]
        workers = {_rank_of(pid): pid for pid in _children(job.pid)}
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        returncode = job.wait(timeout=40)  # well under dist_timeout_min: a dead peer is noticed, not waited for
    finally:
        job.kill()
    assert returncode != 0
    assert not _running(workers[0])  # no orphaned rank left behind
    latest = latest_checkpoint(out / "checkpoints")
    load_policy(latest / "policy")  # complete and loadable
    step = int(latest.name.split("-")[1])
    run_torchrun([*args, f"steps={step + 5}", "resume=true"])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == step + 5 and summary["world_size"] == 2
    assert read_log(out)["step"][-1] == step + 5


def _socket_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_with_slow_evaluation(rank: int, port: int, args: list[str], evaluation_s: float, out: str) -> None:
    """A torchrun-like worker whose rank-0 evaluation sleeps longer than the training collectives' timeout."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)

    def slow_evaluate(self) -> dict:
        time.sleep(evaluation_s)
        return {"success_rate": 0.5, "mean_max_coverage": 0.5}

    Trainer.evaluate = slow_evaluate
    trainer = Trainer(load_config("train", args))
    trainer.fit()
    torch.save({"step": trainer.step, "params": [p.detach().clone() for p in trainer.policy.parameters()]},
               Path(out) / f"rank{rank}.pt")


def test_rank_0_evaluation_longer_than_the_collective_timeout_does_not_fail_the_others(lowdim_dataset, tmp_path):
    """The other ranks wait for rank 0's evaluation on the long-timeout group (dist_eval_timeout_min), so an evaluation
    twice dist_timeout_min (9 s) neither times out a training collective nor desynchronizes the ranks."""
    import torch.multiprocessing as mp

    args = train_args(lowdim_dataset, tmp_path / "run", *TINY_MLP, "batch_size=16", "steps=3", "save_every=0",
                      "eval_every=2", "dist_timeout_min=0.15", "dist_eval_timeout_min=5")
    mp.spawn(_rank_with_slow_evaluation, args=(_socket_port(), args, 18.0, str(tmp_path)), nprocs=2, join=True)
    log = read_log(tmp_path / "run")
    assert list(log["step"]) == [1, 2, 3] and log["eval_success"][1] == 0.5
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # DDP kept the replicas identical
