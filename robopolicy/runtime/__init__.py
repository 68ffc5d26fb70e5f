"""Torch-free runtime for exported policies: numpy + the standard library, and the engine chosen.

Nothing here imports torch or ``robopolicy.policies``; a robot computer needs only ``pip install
'robopolicy[runtime]'`` (numpy, ONNX Runtime, pyzmq, msgpack). Engines are imported when chosen: ONNX Runtime
when an artifact is loaded on it, OpenVINO or TensorRT only when named as the provider. ``CPolicy`` runs a C
export (the microcontroller code) compiled by the host's C compiler instead of an engine. Names are exported
lazily, so ``robopolicy.runtime.ensemble`` (used by the torch ACT policy) loads no engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CPolicy": "robopolicy.runtime.c_policy",
    "TemporalEnsembler": "robopolicy.runtime.ensemble",
    "FORMAT_NAME": "robopolicy.runtime.manifest",
    "FORMAT_VERSION": "robopolicy.runtime.manifest",
    "ArtifactError": "robopolicy.runtime.manifest",
    "read_manifest": "robopolicy.runtime.manifest",
    "sha256_file": "robopolicy.runtime.manifest",
    "NumpyNormalizer": "robopolicy.runtime.normalize",
    "OnnxPolicy": "robopolicy.runtime.onnx_policy",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robopolicy.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
