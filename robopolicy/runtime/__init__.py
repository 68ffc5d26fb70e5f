"""Torch-free runtime for exported policies: numpy + onnxruntime + the standard library only.

Nothing here imports torch or ``robopolicy.policies``; a robot computer needs only
``pip install numpy onnxruntime`` (the ``runtime`` extra) and this package. ``CPolicy`` runs a C export
(the microcontroller code) compiled by the host's C compiler instead of ONNX Runtime.
"""

from robopolicy.runtime.c_policy import CPolicy
from robopolicy.runtime.ensemble import TemporalEnsembler
from robopolicy.runtime.manifest import FORMAT_NAME, FORMAT_VERSION, ArtifactError, read_manifest, sha256_file
from robopolicy.runtime.normalize import NumpyNormalizer
from robopolicy.runtime.onnx_policy import OnnxPolicy

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ArtifactError",
    "CPolicy",
    "NumpyNormalizer",
    "OnnxPolicy",
    "TemporalEnsembler",
    "read_manifest",
    "sha256_file",
]
