"""Does a second process per core beat torch's own threading for training on this CPU? (issue 33, thread settings)

    python bench/train_threads.py [--steps 20] [--rounds 2]

One process with 2 threads at batch 256 against two single-thread processes at batch 128 each, running at once
without exchanging gradients: an upper bound for 2-rank DDP (gloo) on a 2-core machine. Both run robopolicy's
``Trainer.train_step`` (Diffusion Policy, the bundled PushT data); samples/s counts 256 per global step.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(threads: int, batch: int, steps: int, queue, barrier) -> None:
    import torch

    from robopolicy.configs import load_config
    from robopolicy.train.trainer import Trainer

    torch.set_num_threads(threads)
    out = tempfile.mkdtemp(prefix="train-threads-")
    trainer = Trainer(load_config("train", [f"batch_size={batch}", f"num_threads={threads}", "progress=false",
                                            f"output_dir={out}"]))
    for _ in range(3):  # warm-up
        trainer.train_step()
    barrier.wait()
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    queue.put(time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    for _ in range(a.rounds):
        for label, n, threads, batch in (("1 process x 2 threads, batch 256", 1, 2, 256),
                                         ("2 processes x 1 thread, batch 128 each", 2, 1, 128)):
            queue, barrier = ctx.Queue(), ctx.Barrier(n)
            procs = [ctx.Process(target=worker, args=(threads, batch, a.steps, queue, barrier)) for _ in range(n)]
            for p in procs:
                p.start()
            times = [queue.get() for _ in procs]
            for p in procs:
                p.join()
            print(f"{label}: {256 * a.steps / max(times):.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
