"""Layer by layer: the stock U-Net layers against robopolicy/policies/networks/fast_ops.py, forward + backward.

    python bench/fast_ops_layers.py [--batch 256] [--threads 2] [--repeats 30] [--out bench/results/dp_train_speed]

Every convolution shape of Diffusion Policy's PushT U-Net (down_dims 64/128/256, kernel 5, horizon 16) and its
Mish inputs, at the training batch: oneDNN's convolution backward against the reordered one (float32 and bf16),
ATen's Mish against the compiled one-exponential kernels. Each pair is timed in turn in one process; the table
gives milliseconds per forward + backward and the ratio. docs/benchmarks.md section 9 reads it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

from robopolicy.policies.networks import fast_ops

# (name, in, out, length, kernel, stride, padding, count per U-Net call)
CONVS = [("2->64 k5 L16", 2, 64, 16, 5, 1, 2, 1), ("64->64 k5 L16", 64, 64, 16, 5, 1, 2, 4),
         ("64->128 k5 L8", 64, 128, 8, 5, 1, 2, 1), ("128->128 k5 L8", 128, 128, 8, 5, 1, 2, 3),
         ("128->256 k5 L4", 128, 256, 4, 5, 1, 2, 1), ("256->256 k5 L4", 256, 256, 4, 5, 1, 2, 7),
         ("512->128 k5 L4", 512, 128, 4, 5, 1, 2, 1), ("128->128 k5 L4", 128, 128, 4, 5, 1, 2, 3),
         ("256->64 k5 L8", 256, 64, 8, 5, 1, 2, 1), ("64->64 k5 L8", 64, 64, 8, 5, 1, 2, 3),
         ("2->64 k1 L16", 2, 64, 16, 1, 1, 0, 1), ("64->128 k1 L8", 64, 128, 8, 1, 1, 0, 1),
         ("128->256 k1 L4", 128, 256, 4, 1, 1, 0, 1), ("512->128 k1 L4", 512, 128, 4, 1, 1, 0, 1),
         ("256->64 k1 L8", 256, 64, 8, 1, 1, 0, 1), ("64->2 k1 L16", 64, 2, 16, 1, 1, 0, 1),
         ("down 64 k3 s2 L16", 64, 64, 16, 3, 2, 1, 1), ("down 128 k3 s2 L8", 128, 128, 8, 3, 2, 1, 1)]
UPS = [("up 128 k4 s2 L4", 128, 4, 1), ("up 64 k4 s2 L8", 64, 8, 1)]
# (name, shape without the batch, count): the residual blocks' two Mish each, the final block's, FiLM's and the
# step encoder's (on the conditioning vector: step embedding 128 + 18 observation features)
MISH = [("mish 64 x L16", (64, 16), 5), ("mish 128 x L8", (128, 8), 4), ("mish 256 x L4", (256, 4), 8),
        ("mish 128 x L4", (128, 4), 4), ("mish 64 x L8", (64, 8), 4), ("mish FiLM 146", (146,), 14),
        ("mish step 512", (512,), 1)]


def forward_backward(op, grad: torch.Tensor, *inputs) -> None:
    op(*inputs).backward(grad)


def per_call_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="bench/results/dp_train_speed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, cin, cout, length, k, stride, pad, count in CONVS:
            x = torch.randn(args.batch, cin, length, dtype=dtype, requires_grad=True)
            w = torch.randn(cout, cin, k, dtype=dtype, requires_grad=True)
            b = torch.randn(cout, dtype=dtype, requires_grad=True)
            grad = torch.randn(args.batch, cout, (length + 2 * pad - k) // stride + 1, dtype=dtype)
            stock = per_call_ms(partial(forward_backward, partial(F.conv1d, stride=stride, padding=pad), grad, x, w, b),
                                args.repeats)
            fast = per_call_ms(partial(forward_backward, fast_ops._ReorderedConv1dFunction.apply, grad, x, w, b,
                                       stride, pad), args.repeats)
            rows.append({"layer": name, "kind": "conv", "dtype": str(dtype)[6:], "count": count, "stock_ms": stock,
                         "fast_ms": fast})
        for name, channels, length, count in UPS:
            x = torch.randn(args.batch, channels, length, dtype=dtype, requires_grad=True)
            w = torch.randn(channels, channels, 4, dtype=dtype, requires_grad=True)
            b = torch.randn(channels, dtype=dtype, requires_grad=True)
            grad = torch.randn(args.batch, channels, 2 * length, dtype=dtype)
            stock = per_call_ms(partial(forward_backward, partial(F.conv_transpose1d, stride=2, padding=1), grad, x,
                                        w, b), args.repeats)
            fast = per_call_ms(partial(forward_backward, fast_ops._ReorderedConvTranspose1dFunction.apply, grad, x, w,
                                       b, 2, 1), args.repeats)
            rows.append({"layer": name, "kind": "conv", "dtype": str(dtype)[6:], "count": count, "stock_ms": stock,
                         "fast_ms": fast})
        for name, shape, count in MISH:
            x = torch.randn(args.batch, *shape, dtype=dtype, requires_grad=True)
            grad = torch.randn(args.batch, *shape, dtype=dtype)
            stock = per_call_ms(partial(forward_backward, F.mish, grad, x), args.repeats)
            fast = per_call_ms(partial(forward_backward, fast_ops._FusedMishFunction.apply, grad, x), args.repeats)
            rows.append({"layer": name, "kind": "mish", "dtype": str(dtype)[6:], "count": count, "stock_ms": stock,
                         "fast_ms": fast})

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    lines = [f"{stamp} UTC; {cpu}; batch {args.batch}, {args.threads} threads, {args.repeats} calls per cell; "
             f"torch {torch.__version__}", "",
             "| layer | dtype | per U-Net call | stock ms (fwd+bwd) | fast ms | stock / fast |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['dtype']} | {r['count']} | {r['stock_ms']:.2f} | {r['fast_ms']:.2f} | "
                     f"{r['stock_ms'] / r['fast_ms']:.2f} |")
    lines.append("")
    for dtype in ("float32", "bfloat16"):
        for kind, label in (("conv", "convolutions"), ("mish", "Mish")):
            sel = [r for r in rows if r["dtype"] == dtype and r["kind"] == kind]
            stock = sum(r["stock_ms"] * r["count"] for r in sel)
            fast = sum(r["fast_ms"] * r["count"] for r in sel)
            lines.append(f"- {dtype} {label}, weighted by their count in one U-Net call: stock {stock:.1f} ms, "
                         f"fast {fast:.1f} ms ({stock / fast:.2f}x)")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fast_ops_layers_{stamp}.md").write_text(text + "\n")
    (out / f"fast_ops_layers_{stamp}.json").write_text(json.dumps({"rows": rows, "batch": args.batch,
                                                                    "threads": args.threads, "cpu": cpu}, indent=1))


if __name__ == "__main__":
    main()
