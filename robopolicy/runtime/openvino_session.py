"""OpenVINO's CPU runtime behind onnxruntime's ``session.run(None, feed)`` surface, for ``OnnxPolicy``.

The same ONNX files, another engine: on the U-Net graphs at batch 1 OpenVINO runs a fused 10-step chunk
about 1.2x faster than ONNX Runtime's CPU provider (docs/benchmarks.md §2). It is fastest with static
shapes, so each input-shape signature (in practice, each batch size) is compiled once and cached; batch 1
at load. Optional: ``pip install robopolicy[openvino]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_COMPILED_SHAPES = 8  # batch sizes kept compiled per graph; the least recently added is dropped first


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoSession:
    """One ONNX graph compiled for OpenVINO's CPU plugin; float32 unless ``config`` says otherwise.

    ``config``: OpenVINO compile properties, e.g. ``{"INFERENCE_PRECISION_HINT": "bf16"}`` on CPUs with
    AMX/AVX512-BF16 (faster, but outside the fp32 parity bound).
    """

    def __init__(self, path: str | Path, threads: int = 1, config: dict[str, Any] | None = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise RuntimeError("the 'openvino' backend needs the openvino package: pip install 'robopolicy[openvino]'"
                               ) from e
        self.path = Path(path)
        self._ov = ov
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))
        self.input_names = [port.get_any_name() for port in self._model.inputs]
        self.output_names = [port.get_any_name() for port in self._model.outputs]
        # Snippets (OpenVINO's JIT for element-wise subgraphs) are off: with one inference thread, OpenVINO
        # 2026.4 fails to compile graphs holding an ONNX Mish ("Supported precisions set is not available for
        # Mish operation"); turning them off costs about 2 % on the U-Net graphs.
        self.config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
                                       "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                       "SNIPPETS_MODE": "DISABLE", **(config or {})}
        self._requests: dict[tuple, Any] = {}
        # Compile batch 1 now: load-time errors surface at load, and a served policy's first call is not slow.
        batch_one = []
        for port in self._model.inputs:
            dims = list(port.get_partial_shape())
            if any(d.is_dynamic for d in dims[1:]):
                return
            batch_one.append((1, *(d.get_length() for d in dims[1:])))
        self._request(tuple(batch_one))

    def _request(self, shapes: tuple[tuple[int, ...], ...]):
        request = self._requests.get(shapes)
        if request is None:
            model = self._model.clone()
            model.reshape(dict(zip(self.input_names, [list(s) for s in shapes])))
            request = self._core.compile_model(model, "CPU", self.config).create_infer_request()
            if len(self._requests) >= MAX_COMPILED_SHAPES:
                self._requests.pop(next(iter(self._requests)))
            self._requests[shapes] = request
        return request

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [name for name in self.input_names if name not in feed]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {missing} (graph inputs: {self.input_names})")
        arrays = [np.ascontiguousarray(feed[name], dtype=np.float32) for name in self.input_names]
        try:
            request = self._request(tuple(a.shape for a in arrays))
        except RuntimeError as e:  # OpenVINO rejects the shapes, or cannot compile the graph
            shapes = {name: a.shape for name, a in zip(self.input_names, arrays)}
            raise ValueError(f"{self.path.name}: OpenVINO cannot compile this graph for input shapes {shapes}: {e}"
                             ) from e
        # Inputs are shared, not copied (infer(arrays) copies and costs about 130 us more per call).
        for i, array in enumerate(arrays):
            request.set_input_tensor(i, self._ov.Tensor(array, shared_memory=True))
        request.infer()
        wanted = (range(len(self.output_names)) if output_names is None
                  else [self.output_names.index(n) for n in output_names])
        # The request reuses its output buffers on the next call: hand out copies.
        return [np.array(request.get_output_tensor(i).data, copy=True) for i in wanted]

    def get_providers(self) -> list[str]:
        return ["OpenVINO (CPU)"]


__all__ = ["OpenVinoSession", "openvino_available"]
