"""TensorRT engines for an exported artifact: built on the GPU that runs them, driven by ``OnnxPolicy``.

    policy = OnnxPolicy.load("artifacts/pusht", providers=("tensorrt_engine_fp16",))  # builds on first use
    build_engines("artifacts/pusht", precision="fp32", max_batch=8)                   # or ahead of time

Each ONNX graph of the artifact becomes one serialized engine with one optimization profile per input
whose only dynamic axis, the batch, spans [1, max_batch]. ``TensorRTSession`` runs an engine behind
ONNX Runtime's ``session.run(None, feed)`` surface, so the host loop, queues, streaming and warm starts
of ``OnnxPolicy`` are the same code on every engine.

- FP32 engines are built with TF32 off: on Ampere and later GPUs TensorRT otherwise rounds convolution
  and matrix-product inputs to a 10-bit mantissa (errors near 1e-3), outside the 1e-4 parity bound.
- FP16 engines are built from an FP16 copy of each graph (float32 inputs and outputs; normalizations kept
  in float32, where FP16 sums of squares can overflow) as a strongly typed network. TensorRT 11 removed the
  FP16 builder flag; the same route works on TensorRT 10.
- Engines hold kernels for one GPU and one TensorRT version, compiled from one graph: ``engines.json``
  records all three with each engine's sha256, and a load whose GPU, TensorRT or graph differs rebuilds the
  engines instead of running stale ones.

Needs ``pip install 'robopolicy[tensorrt]'`` (tensorrt, cuda-python, onnx) and a CUDA GPU; never torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from robopolicy.runtime.manifest import ArtifactError, read_manifest, sha256_file
from robopolicy.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
ENGINES_FILE = "engines.json"
ENGINE_DIR = "tensorrt"  # default place of the engines, inside the artifact
# Pseudo-providers for OnnxPolicy.load: TensorRT's own runtime on engines built from the artifact's graphs.
ENGINE_PROVIDERS = {"tensorrt_engine": "fp32", "tensorrt_engine_fp16": "fp16"}
# Kept in float32 inside FP16 graphs (mean and variance over a group or a token's features).
FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "ReduceMean")


def import_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, cuda runtime bindings)``, or a RuntimeError that says what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("TensorRT engines need the `tensorrt` Python package and a CUDA GPU; `import tensorrt` "
                           f"failed ({e}). On the GPU machine: pip install 'robopolicy[tensorrt]'. Without a GPU, run "
                           "the ONNX graphs with OnnxPolicy on CPU (providers=['cpu']).") from e
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.6
        except ImportError as e:
            raise RuntimeError("TensorRT engines need cuda-python for device memory and streams; "
                               f"`from cuda.bindings import runtime` failed ({e}): pip install cuda-python") from e
    count = _cuda(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount (no CUDA driver?)")
    if count < 1:
        raise RuntimeError("TensorRT engines need a CUDA GPU; cudaGetDeviceCount found none")
    return trt, cudart


def tensorrt_available() -> bool:
    """True when tensorrt and cuda-python import and a CUDA device is visible."""
    try:
        import_tensorrt()
    except RuntimeError:
        return False
    return True


def _cuda(cudart: Any, result: tuple, what: str) -> Any:
    """cuda-python returns ``(error, *values)``: the value(s), or a RuntimeError naming the call."""
    error, *values = result
    if int(error) != 0:
        _, message = cudart.cudaGetErrorString(error)
        text = message.decode() if isinstance(message, bytes) else str(message)
        raise RuntimeError(f"CUDA {what} failed: {text} ({int(error)})")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_name(cudart: Any) -> str:
    """The current device's name and compute capability: engines are built for exactly this."""
    device = _cuda(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = _cuda(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return f"{name} (sm_{props.major}{props.minor})"


def fp16_graph(onnx_path: str | Path) -> bytes:
    """An FP16 copy of a graph with float32 inputs and outputs and the ``FP32_OPS`` kept in float32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(onnx_path))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS])
    return half.SerializeToString()


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp32", max_batch: int = 8,
                 opt_batch: int = 1, workspace_gb: float = 2.0) -> Path:
    """One serialized engine from one ONNX graph, with a batch optimization profile for every input."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
    trt, _ = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # required on 10.x, the only mode on 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(fp16_graph(onnx_path)) if precision == "fp16" else parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse this graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise RuntimeError(f"{onnx_path}: input {tensor.name!r} has dynamic non-batch axes {tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see TensorRT's log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(engine_path, bytes(serialized))  # never half an engine
    return engine_path


def read_engines_index(engine_dir: str | Path) -> dict[str, Any]:
    """``engines.json`` of an engine directory ({} when there is none yet); a malformed one is a clear error."""
    path = Path(engine_dir) / ENGINES_FILE
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e}); delete it to rebuild the engines") from e
    if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.get("precisions", {}).values()):
        raise ArtifactError(f"{path}: expected {{'precisions': {{precision: {{...}}}}}}; delete it to rebuild")
    return index


def build_engines(artifact_dir: str | Path, out_dir: str | Path | None = None, precision: str = "fp32",
                  max_batch: int = 8, opt_batch: int = 1, workspace_gb: float = 2.0,
                  files: list[str] | None = None) -> dict[str, Path]:
    """Engines for the ONNX files of a verified artifact (``files``, default all), recorded in ``engines.json``."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)  # verifies hashes before anything is built from the graphs
    trt, cudart = import_tensorrt()
    out = Path(out_dir) if out_dir is not None else root / ENGINE_DIR
    names = files if files is not None else [n for n in manifest["files"] if n.endswith(".onnx")]
    engines = {name: build_engine(root / name, out / f"{Path(name).stem}.{precision}.engine", precision, max_batch,
                                  opt_batch, workspace_gb) for name in names}
    index = read_engines_index(out)
    entry = {"tensorrt_version": trt.__version__, "gpu": gpu_name(cudart), "batch": [1, opt_batch, max_batch],
             "engines": {}}
    previous = index.get("precisions", {}).get(precision, {})
    if all(previous.get(k) == entry[k] for k in ("tensorrt_version", "gpu", "batch")):
        entry["engines"] = dict(previous.get("engines", {}))  # keep the still-valid engines of other graphs
    for name, path in engines.items():
        entry["engines"][name] = {"file": path.name, "sha256": sha256_file(path), "source_sha256": manifest["files"][name]}
    index.setdefault("precisions", {})[precision] = entry
    atomic_write_bytes(out / ENGINES_FILE, json.dumps(index, indent=2).encode())
    return engines


def stale_reason(entry: dict[str, Any], name: str, source_sha256: str, engine_dir: Path, trt_version: str, gpu: str,
                 max_batch: int) -> str | None:
    """Why the recorded engine for graph ``name`` cannot run here, or None when it can."""
    if not entry:
        return "no engines were built for this precision"
    if entry.get("tensorrt_version") != trt_version:
        return f"built by TensorRT {entry.get('tensorrt_version')}, this is {trt_version}"
    if entry.get("gpu") != gpu:
        return f"built for {entry.get('gpu')}, this GPU is {gpu}"
    batch = entry.get("batch")
    if not (isinstance(batch, list) and len(batch) == 3 and batch[2] >= max_batch):
        return f"built for batches {batch}, {max_batch} wanted"
    record = entry.get("engines", {}).get(name)
    if not isinstance(record, dict):
        return f"no engine for {name}"
    if record.get("source_sha256") != source_sha256:
        return f"built from another {name} (the graph changed since)"
    file = engine_dir / str(record.get("file"))
    if not file.is_file():
        return f"{file} is missing"
    if sha256_file(file) != record.get("sha256"):
        return f"{file} was altered (sha256 differs from {ENGINES_FILE})"
    return None


def ensure_engines(artifact_dir: str | Path, manifest: dict[str, Any], files: list[str], precision: str,
                   engine_dir: str | Path | None = None, max_batch: int = 8) -> tuple[dict[str, Path], int]:
    """Engines for ``files`` of the artifact that run on this GPU, and their largest batch; missing or stale
    engines are rebuilt (all of ``files`` together, so they share one batch profile)."""
    root = Path(artifact_dir)
    out = Path(engine_dir) if engine_dir is not None else root / ENGINE_DIR
    trt, cudart = import_tensorrt()
    entry = read_engines_index(out).get("precisions", {}).get(precision, {})
    here = (trt.__version__, gpu_name(cudart))
    stale = {name: stale_reason(entry, name, manifest["files"][name], out, *here, max_batch) for name in files}
    if any(reason is not None for reason in stale.values()):
        for name, reason in stale.items():
            if reason is not None:
                log.warning("building the TensorRT %s engine for %s (%s); this takes a while, once", precision,
                            name, reason)
        recorded = entry.get("batch")
        same_build = (entry.get("tensorrt_version"), entry.get("gpu")) == here
        keep = same_build and isinstance(recorded, list) and len(recorded) == 3 and isinstance(recorded[2], int)
        build_engines(root, out, precision, max_batch=max(max_batch, recorded[2]) if keep else max_batch, files=files)
        entry = read_engines_index(out)["precisions"][precision]
    return {name: out / entry["engines"][name]["file"] for name in files}, int(entry["batch"][2])


class IOArg(NamedTuple):
    """An engine input as ONNX Runtime's ``session.get_inputs()`` lists it (the batch axis as a name)."""

    name: str
    shape: list[int | str]


class TensorRTSession:
    """One deserialized engine behind onnxruntime's ``session.run(output_names, feed)`` surface.

    Device buffers are allocated once per tensor and grown when a larger batch arrives; each call copies the
    inputs in, runs the engine and copies the outputs out on one CUDA stream, then waits for it.
    """

    def __init__(self, engine_path: str | Path, precision: str, max_batch: int):
        trt, cudart = import_tensorrt()
        self.path, self.precision, self.max_batch = Path(engine_path), precision, int(max_batch)
        self._trt, self._cudart = trt, cudart
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)
        self._stream = None
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ArtifactError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine (built by "
                                "another TensorRT or for another GPU?); delete it to rebuild")
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}
        self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    def get_inputs(self) -> list[IOArg]:
        return [IOArg(n, ["batch" if d < 0 else int(d) for d in self._shapes[n]]) for n in self.input_names]

    def get_providers(self) -> list[str]:
        return [f"TensorRT {self._trt.__version__} engine ({self.precision})"]

    def _device(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _cuda(self._cudart, self._cudart.cudaFree(pointer), "cudaFree")
            pointer = int(_cuda(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart, context, stream = self._cudart, self._context, self._stream
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {missing} (engine inputs: {self.input_names})")
        arrays = {}  # kept alive until the stream is synchronized
        for name in self.input_names:
            array = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            declared = self._shapes[name]
            if array.ndim != len(declared) or any(d >= 0 and d != s for d, s in zip(declared[1:], array.shape[1:])):
                raise ValueError(f"{self.path.name}: input {name!r} must be (batch, {', '.join(map(str, declared[1:]))}), "
                                 f"got {array.shape}")
            if not 1 <= array.shape[0] <= self.max_batch:
                raise ValueError(f"{self.path.name}: batch {array.shape[0]} is outside the engine's profile "
                                 f"1..{self.max_batch}; rebuild with a larger max_batch")
            if not context.set_input_shape(name, array.shape):
                raise ValueError(f"{self.path.name}: TensorRT rejects input {name!r} of shape {array.shape}")
            pointer = self._device(name, array.nbytes)
            _cuda(cudart, cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                                 cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "copy in")
            context.set_tensor_address(name, pointer)
            arrays[name] = array
        outputs = {}
        for name in self.output_names:
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=self._dtypes[name])
            context.set_tensor_address(name, self._device(name, host.nbytes))
            outputs[name] = host
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed (see TensorRT's log)")
        for name, host in outputs.items():
            _cuda(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes,
                                                 cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "copy out")
        _cuda(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        wanted = self.output_names if output_names is None else output_names
        return [outputs[n] for n in wanted]

    def close(self) -> None:
        """Free the device buffers and the stream (also on garbage collection)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for pointer, _ in self._buffers.values():
            cudart.cudaFree(pointer)
        self._buffers.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the bindings may already be gone
            pass


__all__ = ["ENGINE_PROVIDERS", "PRECISIONS", "TensorRTSession", "build_engine", "build_engines", "ensure_engines",
           "fp16_graph", "import_tensorrt", "tensorrt_available"]
