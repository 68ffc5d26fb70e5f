"""The exported artifact's ``manifest.json``: format version, file hashes, and their checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FORMAT_NAME = "robopolicy-onnx"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"


class ArtifactError(RuntimeError):
    """An exported artifact is missing, altered, of an unsupported version, or cannot be loaded."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(artifact_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse and check ``manifest.json``: format, version and (``verify``) every file's sha256."""
    root = Path(artifact_dir)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise ArtifactError(f"{root}: artifact directory not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing manifest (is this an exported policy directory?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: invalid JSON ({e})") from e
    if manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{path}: not a {FORMAT_NAME} manifest (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(f"{path}: manifest format_version {version!r} is not supported by this runtime "
                            f"(supported: {list(SUPPORTED_VERSIONS)}); re-export the policy or upgrade robopolicy")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{path}: manifest lists no files")
    if verify:
        for name, digest in files.items():
            file = root / name
            if not file.is_file():
                raise ArtifactError(f"{file}: missing file listed in the manifest")
            if sha256_file(file) != digest:
                raise ArtifactError(f"{name}: hash mismatch, artifact altered (sha256 differs from manifest.json)")
    return manifest


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_FILE", "SUPPORTED_VERSIONS", "ArtifactError", "read_manifest",
           "sha256_file"]
