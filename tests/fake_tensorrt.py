"""Fakes at the GPU boundary: ``tensorrt`` and ``cuda.bindings.runtime`` with the calls robopolicy makes.

The fake engine is the ONNX graph TensorRT was handed (FP16 copies included), run by ONNX Runtime on the
CPU; device memory is a dict of bytearrays behind integer pointers, so copies in the wrong direction, a
host pointer used as a device pointer, or a buffer too small for a tensor fail as they would on a GPU
(loudly here, where the real thing would corrupt memory). The builder records its flags and profiles in
the serialized engine, for the tests to inspect. Real hardware is covered by the GPU-only tests.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

HEADER_END = b"\n--onnx--\n"


class FakeTensorRT(types.ModuleType):
    """The ``tensorrt`` module surface robopolicy uses (TensorRT 11 style: no FP16 builder flag)."""

    def __init__(self, cuda: FakeCudaRuntime):
        super().__init__("tensorrt")
        self.__version__ = "11.0.0-fake"
        self.builds: list[dict[str, Any]] = []  # what each build_serialized_network was asked for
        self.cuda = cuda
        trt = self

        class Logger:
            WARNING, ERROR = 2, 1

            def __init__(self, severity: int = 2):
                self.severity = severity

        class NetworkDefinitionCreationFlag(enum.IntEnum):
            STRONGLY_TYPED = 5

        class BuilderFlag(enum.IntEnum):
            TF32 = 7

        class MemoryPoolType(enum.IntEnum):
            WORKSPACE = 0

        class TensorIOMode(enum.IntEnum):
            NONE, INPUT, OUTPUT = 0, 1, 2

        class DataType(enum.IntEnum):
            FLOAT = 0

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...]):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags: int):
                self.flags, self.model = flags, None

            @property
            def num_inputs(self) -> int:
                return len(self._inputs())

            def get_input(self, i: int) -> Tensor:
                return self._inputs()[i]

            def _inputs(self) -> list[Tensor]:
                inits = {t.name for t in self.model.graph.initializer}
                return [Tensor(v.name, tuple(d.dim_value if d.HasField("dim_value") else -1
                                             for d in v.type.tensor_type.shape.dim))
                        for v in self.model.graph.input if v.name not in inits]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger):
                self.network, self.errors = network, []

            def parse(self, data: bytes) -> bool:
                try:
                    self.network.model = onnx.load_from_string(data)
                except Exception as e:  # noqa: BLE001 - a parser reports, never raises
                    self.errors.append(str(e))
                    return False
                return True

            def parse_from_file(self, path: str) -> bool:
                return self.parse(Path(path).read_bytes())

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> str:
                return self.errors[i]

        class Profile:
            def __init__(self):
                self.shapes: dict[str, list[list[int]]] = {}

            def set_shape(self, name: str, low, opt, high) -> None:
                self.shapes[name] = [list(low), list(opt), list(high)]

        class Config:
            def __init__(self):
                self.flags = {BuilderFlag.TF32}  # on by default, as in TensorRT
                self.profiles: list[Profile] = []
                self.workspace = None

            def set_memory_pool_limit(self, pool, size: int) -> None:
                self.workspace = size

            def set_flag(self, flag) -> None:
                self.flags.add(flag)

            def clear_flag(self, flag) -> None:
                self.flags.discard(flag)

            def get_flag(self, flag) -> bool:
                return flag in self.flags

            def add_optimization_profile(self, profile: Profile) -> int:
                self.profiles.append(profile)
                return len(self.profiles) - 1

        class Builder:
            def __init__(self, logger: Logger):
                self.logger = logger

            def create_network(self, flags: int = 0) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                dynamic = [t.name for t in network._inputs() if any(d < 0 for d in t.shape)]
                covered = config.profiles[0].shapes if config.profiles else {}
                if any(name not in covered for name in dynamic):
                    return None  # TensorRT refuses dynamic inputs without a profile
                header = {"version": trt.__version__, "gpu": trt.cuda.gpu_name,
                          "strongly_typed": bool(network.flags >> int(NetworkDefinitionCreationFlag.STRONGLY_TYPED) & 1),
                          "tf32": BuilderFlag.TF32 in config.flags, "profile": covered,
                          "initializer_types": sorted({t.data_type for t in network.model.graph.initializer})}
                trt.builds.append(header)
                return json.dumps(header).encode() + HEADER_END + network.model.SerializeToString()

        class Engine:
            def __init__(self, header: dict, model: bytes):
                self.header = header
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                self.inputs = [i.name for i in self.session.get_inputs()]
                self.outputs = [o.name for o in self.session.get_outputs()]
                self.shapes = {a.name: tuple(d if isinstance(d, int) else -1 for d in a.shape)
                               for a in [*self.session.get_inputs(), *self.session.get_outputs()]}

            @property
            def num_io_tensors(self) -> int:
                return len(self.inputs) + len(self.outputs)

            def get_tensor_name(self, i: int) -> str:
                return [*self.inputs, *self.outputs][i]

            def get_tensor_mode(self, name: str):
                return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name: str):
                return DataType.FLOAT

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self.shapes[name]

            def create_execution_context(self) -> Context:
                return Context(self)

        class Context:
            def __init__(self, engine: Engine):
                self.engine, self.input_shapes, self.addresses = engine, {}, {}
                self.runs = 0

            def set_input_shape(self, name: str, shape) -> bool:
                low, _, high = self.engine.header["profile"][name]
                if len(shape) != len(low) or any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                    return False
                self.input_shapes[name] = tuple(shape)
                return True

            def set_tensor_address(self, name: str, pointer: int) -> bool:
                self.addresses[name] = int(pointer)
                return True

            def _feed(self) -> dict[str, np.ndarray]:
                return {n: np.frombuffer(bytes(trt.cuda.read(self.addresses[n], 4 * int(np.prod(s)))),
                                         dtype=np.float32).reshape(s) if n in self.addresses
                        else np.zeros(s, np.float32) for n, s in self.input_shapes.items()}

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                if name in self.input_shapes:
                    return self.input_shapes[name]
                if set(self.input_shapes) != set(self.engine.inputs):
                    return self.engine.shapes[name]  # -1 until every input shape is set, as in TensorRT
                zeros = {n: np.zeros(s, np.float32) for n, s in self.input_shapes.items()}
                outputs = self.engine.session.run(None, zeros)
                return outputs[self.engine.outputs.index(name)].shape

            def execute_async_v3(self, stream_handle: int) -> bool:
                assert isinstance(stream_handle, int) and trt.cuda.live_stream(stream_handle), "not a live stream"
                outputs = self.engine.session.run(None, self._feed())
                for name, value in zip(self.engine.outputs, outputs):
                    trt.cuda.write(self.addresses[name], np.ascontiguousarray(value, np.float32).tobytes())
                self.runs += 1
                return True

        class Runtime:
            def __init__(self, logger: Logger):
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes):
                head, _, model = bytes(data).partition(HEADER_END)
                try:
                    header = json.loads(head)
                except ValueError:
                    return None
                if header.get("version") != trt.__version__ or header.get("gpu") != trt.cuda.gpu_name:
                    return None  # engines do not move between TensorRT versions or GPUs
                return Engine(header, model)

        for name, value in list(locals().items()):
            if isinstance(value, type):
                setattr(self, name, value)

    @staticmethod
    def nptype(dtype) -> type:
        return np.float32


class FakeCudaRuntime(types.ModuleType):
    """``cuda.bindings.runtime``: every call returns ``(error, *values)``; memory lives in bytearrays."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - the binding's names
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class Stream:
        def __init__(self, handle: int):
            self.handle = handle

        def __int__(self) -> int:
            return self.handle

    def __init__(self):
        super().__init__("cuda.bindings.runtime")
        self.devices = 1
        self.gpu_name = "Fake GPU (sm_90)"
        self.memory: dict[int, bytearray] = {}
        self.streams: set[int] = set()
        self._next = itertools.count(0x7F0000000000, 0x100000)

    ok = cudaError_t.cudaSuccess

    def cudaGetErrorString(self, error):  # noqa: N802
        return self.ok, f"fake CUDA error {int(error)}".encode()

    def cudaGetDeviceCount(self):  # noqa: N802
        return (self.ok, self.devices) if self.devices else (self.cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDevice(self):  # noqa: N802
        return self.ok, 0

    def cudaGetDeviceProperties(self, device: int):  # noqa: N802
        name, _, cc = self.gpu_name.rpartition(" (sm_")
        return self.ok, types.SimpleNamespace(name=name.encode(), major=int(cc[0]), minor=int(cc[1:-1]))

    def cudaMalloc(self, size: int):  # noqa: N802
        pointer = next(self._next)
        self.memory[pointer] = bytearray(size)
        return self.ok, pointer

    def cudaFree(self, pointer: int):  # noqa: N802
        if self.memory.pop(int(pointer), None) is None:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return (self.ok,)

    def cudaStreamCreate(self):  # noqa: N802
        stream = self.Stream(next(self._next))
        self.streams.add(stream.handle)
        return self.ok, stream

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams.discard(int(stream))
        return (self.ok,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (self.ok,) if int(stream) in self.streams else (self.cudaError_t.cudaErrorInvalidValue,)

    def live_stream(self, handle: int) -> bool:
        return handle in self.streams

    def read(self, pointer: int, count: int) -> bytearray:
        buffer = self.memory[pointer]  # KeyError: not a device allocation
        assert count <= len(buffer), f"read of {count} bytes from a {len(buffer)}-byte device buffer"
        return buffer[:count]

    def write(self, pointer: int, data: bytes) -> None:
        buffer = self.memory[pointer]
        assert len(data) <= len(buffer), f"write of {len(data)} bytes into a {len(buffer)}-byte device buffer"
        buffer[:len(data)] = data

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind, stream):  # noqa: N802
        assert int(stream) in self.streams, "copy on a stream that does not exist"
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            assert src not in self.memory, "host-to-device copy from a device pointer"
            self.write(dst, ctypes.string_at(src, count))
        elif kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            assert dst not in self.memory, "device-to-host copy into a device pointer"
            ctypes.memmove(dst, bytes(self.read(src, count)), count)
        else:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return (self.ok,)


class RealCudaMemory:
    """The fake engine's view of a real GPU: it reads its inputs from, and writes its outputs to, real device
    memory through cuda-python, so robopolicy's allocations, copies and stream handling run on the hardware."""

    def __init__(self, cudart: Any):
        from robopolicy.runtime.tensorrt_engines import gpu_name

        self.cudart, self.gpu_name = cudart, gpu_name(cudart)

    def _check(self, result: tuple, what: str) -> None:
        assert int(result[0]) == 0, f"{what}: CUDA error {result[0]}"

    def live_stream(self, handle: int) -> bool:
        # The engine would run on this stream: it must exist, and the inputs copied on it must have arrived.
        return int(self.cudart.cudaStreamSynchronize(handle)[0]) == 0

    def read(self, pointer: int, count: int) -> bytearray:
        host = np.empty(count, np.uint8)
        self._check(self.cudart.cudaMemcpy(host.ctypes.data, pointer, count,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "read")
        return bytearray(host.tobytes())

    def write(self, pointer: int, data: bytes) -> None:
        host = np.frombuffer(data, np.uint8).copy()
        self._check(self.cudart.cudaMemcpy(pointer, host.ctypes.data, host.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "write")


def real_cuda_runtime() -> Any | None:
    """cuda-python's runtime bindings when a CUDA GPU is visible, else None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    error, count = cudart.cudaGetDeviceCount()
    return cudart if int(error) == 0 and count > 0 else None


def install(monkeypatch, real_cuda: bool = False) -> FakeTensorRT:
    """Put the fakes in ``sys.modules`` for one test; returns the fake ``tensorrt`` (its ``.cuda`` the runtime).

    ``real_cuda``: fake only TensorRT; device memory and streams are the GPU's, through the real cuda-python.
    """
    if real_cuda:
        trt = FakeTensorRT(RealCudaMemory(real_cuda_runtime()))
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt
    cuda = FakeCudaRuntime()
    trt = FakeTensorRT(cuda)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda
    package = types.ModuleType("cuda")
    package.bindings = bindings
    package.__path__ = []
    bindings.__path__ = []
    for name, module in {"tensorrt": trt, "cuda": package, "cuda.bindings": bindings,
                         "cuda.bindings.runtime": cuda}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return trt
