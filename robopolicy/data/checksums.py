"""Content checksums of a dataset's files (``meta/checksums.json``) and ``verify_dataset``.

Parquet and MP4 files carry no checksum of their values: a flipped bit in a float column reads back as a
different number, and a damaged video decodes into altered frames. The writer and the recorder therefore
list every file of the dataset with its size and sha256 in ``meta/checksums.json``; the recorder updates it in
the same atomic ``meta/`` exchange that commits each episode, so it never disagrees with the metadata.

The reader checks what it reads anyway (metadata and data parquet: their bytes are hashed on load) and, for
videos, their sizes at load and their hash the first time they are decoded.
:func:`robopolicy.data.verify.verify_dataset` checks everything and also reports files the checksum file does not
list. LeRobot ignores the extra file in ``meta/``;
datasets LeRobot wrote have none and load with a note (``robopolicy dataset action=verify write=true`` adds one).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from robopolicy.data.format import CHECKSUMS_PATH, DatasetError
from robopolicy.utils.io import atomic_write_text

log = logging.getLogger(__name__)

CHECKSUMS_FORMAT = "robopolicy-dataset-checksums"
CHECKSUMS_VERSION = 1
# Directories and files that are not part of the dataset: the recorder's staging area, temporary files.
_IGNORED_DIRS = {".recorder", ".cache", ".git"}


def file_digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of one file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def bytes_digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def dataset_files(root: Path) -> list[str]:
    """Paths (relative, '/'-separated) of every file that belongs to the dataset, sorted."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in _IGNORED_DIRS or any(p.startswith(".") for p in rel.parts):
            continue
        name = rel.as_posix()
        if name != CHECKSUMS_PATH:
            out.append(name)
    return out


def checksums_document(files: dict[str, dict[str, Any]]) -> str:
    return json.dumps({"format": CHECKSUMS_FORMAT, "version": CHECKSUMS_VERSION, "algorithm": "sha256",
                       "files": dict(sorted(files.items()))}, indent=1)


def compute_checksums(root: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Digests of every dataset file; entries in ``known`` are trusted as they are (files just written)."""
    known = known or {}
    return {name: known.get(name) or file_digest(root / name) for name in dataset_files(root)}


def write_checksums(root: str | Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """(Re)write ``meta/checksums.json`` from the files on disk; returns the entries."""
    root = Path(root)
    files = compute_checksums(root, known)
    atomic_write_text(root / CHECKSUMS_PATH, checksums_document(files))
    return files


def read_checksums(root: str | Path) -> dict[str, dict[str, Any]] | None:
    """The entries of ``meta/checksums.json``, checked for form; None when the dataset has none."""
    path = Path(root) / CHECKSUMS_PATH
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != CHECKSUMS_FORMAT or doc.get("algorithm") != "sha256":
        raise DatasetError(f"{path}: not a {CHECKSUMS_FORMAT} file with algorithm sha256")
    if doc.get("version") != CHECKSUMS_VERSION:
        raise DatasetError(f"{path}: field 'version' is {doc.get('version')!r}, this reader knows {CHECKSUMS_VERSION}")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise DatasetError(f"{path}: field 'files' must map file names to {{size, sha256}}")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)
                and len(entry["sha256"]) == 64):
            raise DatasetError(f"{path}: field 'files.{name}' must be {{size: int, sha256: 64 hex digits}}, "
                               f"got {entry!r}")
    return files


def check_digest(root: Path, name: str, expected: dict[str, Any], actual: dict[str, Any]) -> None:
    if actual["size"] != expected["size"]:
        raise DatasetError(f"{root / name}: {actual['size']} bytes, {root / CHECKSUMS_PATH} lists "
                           f"{expected['size']} (truncated, appended to or replaced)")
    if actual["sha256"] != expected["sha256"]:
        raise DatasetError(f"{root / name}: sha256 differs from {root / CHECKSUMS_PATH} (the file is corrupt or "
                           "was altered after it was written)")


def check_size(root: Path, name: str, expected: dict[str, Any]) -> None:
    path = root / name
    if not path.is_file():
        raise DatasetError(f"{path}: missing file listed in {root / CHECKSUMS_PATH}")
    check_digest(root, name, expected, {"size": path.stat().st_size, "sha256": expected["sha256"]})


__all__ = ["compute_checksums", "file_digest", "read_checksums",
           "write_checksums"]
