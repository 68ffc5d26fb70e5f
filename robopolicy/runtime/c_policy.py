"""A C export (``robopolicy export format=c``) compiled for this host and called in-process through ctypes.

The same C99 that runs on a microcontroller, built as a shared library by the host's C compiler: no torch and
no ONNX Runtime, and a policy call costs a few microseconds plus Python's own overhead. That is the route for
small MLP policies at kilohertz rates, and it lets the exact microcontroller code be evaluated in closed loop
and served over ZeroMQ before it is flashed.

    policy = CPolicy.load("artifacts/hover_c")        # compiles once; later loads reuse the library
    action = policy.select_action({"observation.state": state})

Families: ``mlp`` (a deterministic chunk) and ``flow`` (a chunk integrated from noise that the C code draws
from a 32-bit seed; the seed comes from ``rng``). Streaming Flow Policy's C code streams one action per call
with its own state, so on the host it runs from its ONNX artifact.

The host build reassociates floating-point sums (``-fassociative-math``, no ``-ffast-math``: NaN checks
still work), so that the compiler vectorizes the matrix-vector products. Results therefore differ from the
microcontroller's in the last bits (1e-7 relative). The library is cached next to the sources under a name
that hashes the sources, the compiler, the flags and this CPU's instruction-set flags. A library built with
``-march=native`` never runs on a CPU it was not built for. Load only exports you trust: like any native library,
the compiled policy runs inside the calling process.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.runtime.manifest import ArtifactError

C_FAMILIES = ("mlp", "flow")
HOST_CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
               "-fno-trapping-math", "-std=c99")
PORTABLE_CFLAGS = ("-O2", "-fno-math-errno", "-std=c99")  # when the compiler rejects HOST_CFLAGS
F32 = np.float32


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def find_compiler(compiler: str | None = None) -> str:
    """The C compiler to use: ``compiler``, else $CC, else cc/gcc/clang on PATH; a RuntimeError if none."""
    for name in ([compiler] if compiler else [os.environ.get("CC"), "cc", "gcc", "clang"]):
        if name and shutil.which(name):
            return str(shutil.which(name))
    raise RuntimeError(f"CPolicy needs a C compiler to build the policy for this host; found none "
                       f"({compiler or 'CC, cc, gcc, clang'}): install gcc, or run the ONNX artifact instead")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _build_dir(directory: Path) -> Path:
    """``<export>/build``, or a per-user cache when the export is read-only (installed, mounted)."""
    build_dir = directory / "build"
    try:
        build_dir.mkdir(exist_ok=True)
        if _writable(build_dir):
            return build_dir
    except OSError:
        pass
    cache = Path(tempfile.gettempdir()) / f"robopolicy-c-{os.getuid() if hasattr(os, 'getuid') else 0}"
    cache.mkdir(exist_ok=True)
    return cache


def build_library(directory: str | Path, compiler: str | None = None, cflags: tuple[str, ...] = HOST_CFLAGS) -> Path:
    """Compile ``policy.c`` of a C export into a shared library (cached), and return its path.

    With the default flags, a compiler that rejects them (``-march=native`` on some targets) gets a second try
    with ``PORTABLE_CFLAGS``, and a warning: a slower library rather than none.
    """
    directory = Path(directory)
    source = directory / "policy.c"
    if not source.is_file() or not (directory / "policy.h").is_file():
        raise ArtifactError(f"{directory}: a C export needs policy.c and policy.h (write them with "
                            "`robopolicy export format=c`)")
    cc = find_compiler(compiler)
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    errors = []
    for flags in ((cflags, PORTABLE_CFLAGS) if tuple(cflags) == HOST_CFLAGS else (cflags,)):
        key = hashlib.sha256()
        for part in (source.read_bytes(), (directory / "policy.h").read_bytes(), cc.encode(), version.encode(),
                     " ".join(flags).encode(), _cpu_flags().encode()):
            key.update(part)
            key.update(b"\0")
        library = _build_dir(directory) / f"policy-{key.hexdigest()[:16]}.so"
        if library.is_file():
            return library
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(partial), str(source), "-lm"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            os.replace(partial, library)  # atomic: a concurrent loader sees no half-written library
            if errors:
                warnings.warn(f"{source}: {Path(cc).name} rejected {' '.join(cflags)}; built with "
                              f"{' '.join(flags)} instead (slower):\n{errors[0]}", stacklevel=2)
            return library
        partial.unlink(missing_ok=True)
        errors.append(f"{Path(cc).name} {' '.join(flags)} failed (exit {result.returncode}):\n"
                      f"{result.stderr.strip()[-2000:]}")
    raise ArtifactError(f"{source}: " + "\n".join(errors))


class CPolicy:
    """The policy interface (``predict_chunk``, ``select_action`` with To/Ta queues, ``reset``, ``seed``) on a
    C export's compiled library."""

    def __init__(self, directory: Path, meta: dict[str, Any], library: ctypes.CDLL, library_path: Path):
        self.directory, self.meta, self.library_path = directory, meta, library_path
        self.family = self.name = meta["family"]
        self.n_obs_steps, self.horizon = int(meta["n_obs_steps"]), int(meta["horizon"])
        self.n_action_steps, self.action_dim = int(meta["n_action_steps"]), int(meta["action_dim"])
        self.action_key, self.fps = meta["action_key"], meta.get("fps")
        self.obs_layout = [(f["key"], int(f["size"])) for f in meta["obs_layout"]]
        self.input_features = [(key, (size,), key) for key, size in self.obs_layout]
        self.obs_dim = int(meta["obs_dim"])
        self._lib = library
        pointer = ctypes.c_void_p
        if self.family == "mlp":
            self._chunk_fn = library.policy_chunk
            self._chunk_fn.argtypes = [pointer, pointer]
        else:
            self._chunk_fn = library.policy_flow_chunk
            self._chunk_fn.argtypes = [pointer, ctypes.c_uint32, pointer]
        self._chunk_fn.restype = ctypes.c_int
        self._obs_queue: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)
        self._action_queue: deque[np.ndarray] = deque()
        self._rng = np.random.default_rng()
        # One observation in the C layout (oldest step first, features concatenated per step) and one chunk, at
        # fixed addresses: a call copies the features in and passes two integers, nothing else per call.
        self._obs = np.empty((self.n_obs_steps, self.obs_dim // self.n_obs_steps), F32)
        offsets = np.cumsum([0] + [size for _, size in self.obs_layout])
        self._obs_views = [self._obs[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        self._out = np.empty((self.horizon, self.action_dim), F32)
        self._obs_ptr, self._out_ptr = self._obs.ctypes.data, self._out.ctypes.data

    @classmethod
    def load(cls, directory: str | Path, compiler: str | None = None,
             cflags: tuple[str, ...] = HOST_CFLAGS) -> CPolicy:
        directory = Path(directory)
        meta_path = directory / "export.json"
        if not meta_path.is_file():
            raise ArtifactError(f"{directory}: no export.json (not a C export; write one with "
                               "`robopolicy export format=c`)")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ArtifactError(f"{meta_path}: invalid JSON ({e})") from e
        if meta.get("family") not in C_FAMILIES:
            raise ArtifactError(f"{meta_path}: family {meta.get('family')!r} does not run on the host from C "
                               f"(supported: {C_FAMILIES}); serve its ONNX artifact instead")
        missing = [k for k in ("n_obs_steps", "horizon", "n_action_steps", "action_dim", "obs_dim", "obs_layout",
                               "action_key") if k not in meta]
        if missing:
            raise ArtifactError(f"{meta_path}: fields {missing} are missing (written by an older robopolicy?); "
                               "export the policy again")
        library_path = build_library(directory, compiler, cflags)
        return cls(directory, meta, ctypes.CDLL(str(library_path)), library_path)

    # ---- the policy interface ----------------------------------------------------------------------
    def _feature(self, obs_history: dict[str, Any], key: str, size: int) -> np.ndarray:
        if key not in obs_history:
            raise KeyError(f"observation history lacks feature {key!r} (needs {[k for k, _ in self.obs_layout]})")
        x = obs_history[key]
        if not isinstance(x, np.ndarray):
            x = np.asarray(x, dtype=F32)
        if x.shape[1:] != (self.n_obs_steps, size):
            if x.ndim < 2 or x.shape[1] != self.n_obs_steps or int(np.prod(x.shape[2:])) != size:
                raise ValueError(f"observation {key!r}: expected (B, {self.n_obs_steps}, {size}), got {x.shape}")
            x = x.reshape(x.shape[0], self.n_obs_steps, size)
        return x

    def predict_chunk(self, obs_history: dict[str, Any], noise: np.ndarray | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        """Action chunk (B, T, A) in robot units from an observation history {key: (B, To, ...)} in robot units.

        ``flow``: each row's noise is drawn by the C code from a seed taken from ``rng`` (else the policy's own,
        see ``seed``); an explicit ``noise`` array is not supported.
        """
        if noise is not None:
            raise ValueError("CPolicy: the C code draws its own noise from a seed; pass rng (or call seed())")
        features = [self._feature(obs_history, key, size) for key, size in self.obs_layout]
        batch = len(features[0])
        if any(len(x) != batch for x in features):
            raise ValueError(f"observation history: batch sizes differ across features "
                             f"{ {k: len(x) for (k, _), x in zip(self.obs_layout, features)} }")
        chunks = np.empty((batch, self.horizon, self.action_dim), F32)
        for row in range(batch):
            for view, x in zip(self._obs_views, features):
                view[...] = x[row]  # into the C layout (casts to float32)
            if self.family == "mlp":
                status = self._chunk_fn(self._obs_ptr, self._out_ptr)
            else:
                status = self._chunk_fn(self._obs_ptr, int((rng or self._rng).integers(2 ** 32)), self._out_ptr)
            if status != 0:
                raise ValueError(f"{self.directory}: the policy refused observation row {row} (a non-finite "
                                 "input, or a non-finite action): command a safe stop")
            chunks[row] = self._out
        return chunks

    def executable_actions(self, chunk: np.ndarray) -> np.ndarray:
        start = self.n_obs_steps - 1
        return chunk[:, start : start + self.n_action_steps]

    @property
    def needs_new_chunk(self) -> bool:
        return not self._action_queue

    def select_action(self, observation: dict[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
        """One action in robot units for the current observation (single or batched), with To/Ta queues."""
        first_key, first_size = self.obs_layout[0]
        unbatched = first_key in observation and np.asarray(observation[first_key]).ndim == 1
        obs = {}
        for key, size in self.obs_layout:
            if key not in observation:
                raise KeyError(f"observation lacks feature {key!r} (needs {[k for k, _ in self.obs_layout]})")
            x = np.array(observation[key], dtype=F32)  # a copy: callers may refill one buffer in place
            x = x[None] if x.ndim == 1 else x
            if x.ndim != 2 or x.shape[1] != size:
                raise ValueError(f"observation {key!r}: expected ({size},) or (B, {size}), got {np.shape(observation[key])}")
            obs[key] = x
        for _ in range(self.n_obs_steps if not self._obs_queue else 1):
            self._obs_queue.append(obs)
        if not self._action_queue:
            history = {k: np.stack([o[k] for o in self._obs_queue], axis=1) for k in obs}
            chunk = self.executable_actions(self.predict_chunk(history, rng=rng))
            self._action_queue.extend(np.swapaxes(chunk, 0, 1))
        action = self._action_queue.popleft()
        return action[0] if unbatched else action

    def seed(self, seed: int) -> None:
        """Seed the stream the flow's noise seeds come from, so a seeded evaluation repeats exactly."""
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self._obs_queue.clear()
        self._action_queue.clear()

    def set_n_action_steps(self, n_action_steps: int) -> None:
        if not 1 <= n_action_steps <= self.horizon - self.n_obs_steps + 1:
            raise ValueError(f"n_action_steps must be in [1, {self.horizon - self.n_obs_steps + 1}] "
                             f"(T={self.horizon}, To={self.n_obs_steps}), got {n_action_steps}")
        self.n_action_steps = int(n_action_steps)
        self.reset()


__all__ = ["CPolicy", "C_FAMILIES", "HOST_CFLAGS", "PORTABLE_CFLAGS", "build_library", "find_compiler"]
