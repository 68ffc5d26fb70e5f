"""TensorRT engines (FP32 / FP16) from an exported ONNX artifact, via the ``tensorrt`` Python API.

    from robopolicy.export.tensorrt import build_engines
    build_engines("outputs/export/pusht_diffusion", precision="fp16", max_batch=8)

Each graph of the artifact becomes ``<graph>.<precision>.engine`` with one optimization profile
per input whose only dynamic axis, the batch, spans [1, max_batch] (optimum ``opt_batch``).
``engines.json`` lists them with their sha256. Engines are specific to the GPU and TensorRT
version that built them: build on the robot. Without TensorRT or a CUDA GPU a clear
``RuntimeError`` is raised. (ONNX Runtime's TensorRT execution provider is the alternative:
``OnnxPolicy.load(dir, providers=("tensorrt", "cuda", "cpu"), trt_cache_dir=...)``.)
"""

from __future__ import annotations

import json
from pathlib import Path

from robopolicy.runtime.manifest import read_manifest, sha256_file

PRECISIONS = ("fp32", "fp16")


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package imports and a CUDA device is visible to it."""
    try:
        _import_tensorrt()
        return True
    except RuntimeError:
        return False


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("TensorRT engines need the `tensorrt` Python package and a CUDA GPU; `import tensorrt` "
                           f"failed ({e}). Install TensorRT (pip install tensorrt, CUDA 12) on the GPU machine, or run "
                           "the ONNX graphs with OnnxPolicy on CPU/CUDA.") from e
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            raise RuntimeError("trt.Builder returned None")
    except Exception as e:
        raise RuntimeError(f"TensorRT is installed but cannot create a builder (no CUDA GPU/driver?): {e}") from e
    return trt


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp32", max_batch: int = 8,
                 opt_batch: int = 1, workspace_gb: float = 2.0) -> Path:
    """One serialized engine from one ONNX graph, with a batch optimization profile for every input."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit batch is gone in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse this graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise RuntimeError("fp16 requested but this GPU has no fast FP16")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        rest = tuple(inp.shape)[1:]
        if any(d < 0 for d in rest):
            raise RuntimeError(f"{onnx_path}: input {inp.name!r} has dynamic non-batch axes {tuple(inp.shape)}")
        profile.set_shape(inp.name, (1, *rest), (max(1, min(opt_batch, max_batch)), *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def build_engines(artifact_dir: str | Path, out_dir: str | Path | None = None, precision: str = "fp32",
                  max_batch: int = 8, opt_batch: int = 1, workspace_gb: float = 2.0) -> dict[str, Path]:
    """Engines for every ONNX file of a verified artifact; writes ``engines.json`` next to them."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)  # verifies hashes before anything is built from the graphs
    _import_tensorrt()
    out = Path(out_dir) if out_dir is not None else root / "tensorrt"
    engines: dict[str, Path] = {}
    for name in manifest["files"]:
        if name.endswith(".onnx"):
            engines[name] = build_engine(root / name, out / f"{Path(name).stem}.{precision}.engine", precision,
                                         max_batch, opt_batch, workspace_gb)
    import tensorrt as trt

    (out / "engines.json").write_text(json.dumps({
        "tensorrt_version": trt.__version__, "precision": precision, "batch": [1, opt_batch, max_batch],
        "engines": {k: {"file": v.name, "sha256": sha256_file(v)} for k, v in engines.items()},
    }, indent=2))
    return engines


__all__ = ["PRECISIONS", "build_engine", "build_engines", "tensorrt_available"]
