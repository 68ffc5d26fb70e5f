"""The U-Net's Mish in ONNX: the four-operator form (negated GroupNorm affine, z tanh(log sigmoid(z))) against
the six-operator Sigmoid form it replaced, on the same weights, one ONNX Runtime thread, batch 1.

    python bench/mish_forms.py [--down-dims 64,128,256] [--seconds 5]

Exports the default Diffusion Policy U-Net's export twin (robopolicy/export/unet_graph.py) twice, once as
exported and once with every block's negation undone (the six-operator ``export_mish`` after a plain affine),
checks that both graphs compute the same function, and times one denoiser step of each in interleaved
blocks. Prints operator counts, the largest difference between the two graphs, and p50/p99 per step.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from robopolicy.export.unet_graph import ExportUnet, _ConvNormAct  # noqa: E402
from robopolicy.policies.networks.unet1d import ConditionalUnet1D  # noqa: E402


def six_operator_twin(twin: ExportUnet) -> ExportUnet:
    """The same twin with Mish read from the plain affine output (export_mish, six operators)."""
    import copy

    old = copy.deepcopy(twin)
    for module in old.modules():
        if isinstance(module, _ConvNormAct) and module.negate:
            module.negate = False
            module.gamma.neg_()
            module.beta.neg_()
    return old


def session(twin: ExportUnet, inputs: tuple[torch.Tensor, ...]) -> tuple[ort.InferenceSession, int]:
    buffer = io.BytesIO()
    torch.onnx.export(twin, inputs, buffer, input_names=["sample", "timestep", "cond"], opset_version=18,
                      dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    n_ops = len(onnx.load_from_string(buffer.getvalue()).graph.node)
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"]), n_ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--down-dims", default="64,128,256")
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 2 * 7, down_dims=[int(d) for d in args.down_dims.split(",")]).eval()
    with torch.no_grad():
        for p in net.parameters():  # non-trivial weights, so GroupNorm affines are not all ones and zeros
            p.add_(0.1 * torch.randn_like(p))
    new = ExportUnet(net, args.horizon).eval()
    old = six_operator_twin(new)
    inputs = (torch.randn(1, args.horizon, 2), torch.tensor([50.0]), torch.randn(1, 14))
    feed = {"sample": inputs[0].numpy(), "timestep": inputs[1].numpy(), "cond": inputs[2].numpy()}
    forms = {"six operators (Sigmoid form)": session(old, inputs), "four operators (negated affine)": session(new, inputs)}
    outputs = [s.run(None, feed)[0] for s, _ in forms.values()]
    with torch.no_grad():
        reference = net(*inputs).numpy()
    times: dict[str, list[float]] = {name: [] for name in forms}
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds * len(forms):
        for name, (s, _) in forms.items():
            for _ in range(5):
                s.run(None, feed)
            for _ in range(5):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[name].append((time.perf_counter() - t0) * 1e3)
    print(f"U-Net {args.down_dims}, T = {args.horizon}, one denoiser step, batch 1, 1 thread")
    print("| Mish form | operators | max abs diff to torch | p50 / p99 ms per step |")
    print("|---|---|---|---|")
    for (name, (_, n_ops)), out in zip(forms.items(), outputs):
        t = np.asarray(times[name])
        print(f"| {name} | {n_ops} | {np.abs(out - reference).max():.1e} | "
              f"{np.percentile(t, 50):.3f} / {np.percentile(t, 99):.3f} |")
    names = list(forms)
    ratio = np.median(times[names[1]]) / np.median(times[names[0]])
    print(f"\nfour / six operators: {ratio:.2f}x the time; the two graphs differ by at most "
          f"{np.abs(outputs[0] - outputs[1]).max():.1e}")


if __name__ == "__main__":
    main()
