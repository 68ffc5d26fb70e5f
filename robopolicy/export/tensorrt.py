"""TensorRT engines (FP32 / FP16) from an exported ONNX artifact: ``robopolicy export format=tensorrt``.

    from robopolicy.export.tensorrt import build_engines
    build_engines("outputs/export/pusht_diffusion", precision="fp16", max_batch=8)

The building and running live in the torch-free runtime (:mod:`robopolicy.runtime.tensorrt_engines`),
because engines are specific to the GPU and TensorRT version that build them: a robot builds its own,
ahead of time with this command or on the first ``OnnxPolicy.load(..., providers=("tensorrt_engine",))``.
(ONNX Runtime's TensorRT execution provider is the other route: ``providers=("tensorrt", "cuda", "cpu")``.)
"""

from __future__ import annotations

from robopolicy.runtime.tensorrt_engines import PRECISIONS, build_engine, build_engines, tensorrt_available

__all__ = ["PRECISIONS", "build_engine", "build_engines", "tensorrt_available"]
