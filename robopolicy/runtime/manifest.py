"""The exported artifact's ``manifest.json``: format version, file hashes, and their checks.

The manifest hashes every graph; ``manifest.json.sha256`` (``sha256sum -c`` format) hashes the manifest itself, so
an edit of its statistics, rates or shapes fails at load like an edited graph does. It detects corruption and
unintended edits, not an attacker who can rewrite both files: that needs a signature over the hash file.
Everything the runtime and a server read is validated here or in ``OnnxPolicy.load``, not at the first request.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.utils.io import atomic_write_bytes

FORMAT_NAME = "robopolicy-onnx"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
MANIFEST_HASH_FILE = "manifest.json.sha256"
# Families whose chunk is a deterministic function of the observation: exported as one graph, obs -> chunk.
CHUNK_FAMILIES = ("act", "mlp", "mip")
FAMILIES = ("diffusion", "flow", "sfp", *CHUNK_FAMILIES)
GRAPH_KINDS = ("per_step", "fused")
# The graph files each family's runtime opens, by graph kind.
GRAPH_ROLES = {**{f: {"per_step": {"policy"}, "fused": {"policy"}} for f in CHUNK_FAMILIES},
               **{f: {"per_step": {"encoder", "step"}, "fused": {"fused"}} for f in ("diffusion", "flow", "sfp")}}
# Sampler fields the runtime reads for each family.
SAMPLER_FIELDS = {
    "diffusion": ("kind", "num_inference_steps", "num_train_timesteps", "prediction_type", "clip_sample",
                  "clip_sample_range", "alphas_cumprod"),
    "flow": ("integrator", "num_inference_steps", "clip_sample", "clip_sample_range"),
    "sfp": ("integrator", "integration_steps_per_action", "n_knots", "sigma0", "state_dim"),
    **{f: () for f in CHUNK_FAMILIES},
}
NORMALIZATION_STATS = {"identity": (), "min_max": ("min", "max"), "mean_std": ("mean", "std")}


class ArtifactError(RuntimeError):
    """An exported artifact is missing, altered, of an unsupported version, or cannot be loaded."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def write_manifest(artifact_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` and its hash file (the manifest first: a crash between leaves a mismatch, which
    refuses to load, never an unhashed manifest that loads)."""
    root = Path(artifact_dir)
    text = json.dumps(manifest, indent=2).encode()
    atomic_write_bytes(root / MANIFEST_FILE, text)
    atomic_write_bytes(root / MANIFEST_HASH_FILE, f"{manifest_digest(text)}  {MANIFEST_FILE}\n".encode())


def verify_manifest_hash(root: Path) -> None:
    path, hash_path = root / MANIFEST_FILE, root / MANIFEST_HASH_FILE
    if not hash_path.is_file():
        raise ArtifactError(f"{hash_path}: missing, so {MANIFEST_FILE} is not covered by a hash (exported by an older "
                            "robopolicy?); export the policy again")
    fields = hash_path.read_text().split()
    if len(fields) != 2 or fields[1] != MANIFEST_FILE or len(fields[0]) != 64:
        raise ArtifactError(f"{hash_path}: expected one line '<sha256>  {MANIFEST_FILE}'")
    if manifest_digest(path.read_bytes()) != fields[0].lower():
        raise ArtifactError(f"{path}: hash mismatch, manifest altered (sha256 differs from {hash_path})")


def read_manifest(artifact_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse and check ``manifest.json``: format, version, fields and (``verify``) its own and every file's sha256.

    Field checks run first so that a hand edit is reported by field; the hashes then catch any change they miss.
    """
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
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise ArtifactError(f"{path}: manifest format_version {version!r} is not supported by this runtime "
                            f"(supported: {list(SUPPORTED_VERSIONS)}); re-export the policy or upgrade robopolicy")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{path}: manifest lists no files")
    check_fields(manifest, path)
    if verify:
        verify_manifest_hash(root)
        for name, digest in files.items():
            file = root / name
            if not file.is_file():
                raise ArtifactError(f"{file}: missing file listed in the manifest")
            if sha256_file(file) != digest:
                raise ArtifactError(f"{file}: hash mismatch, artifact altered (sha256 differs from {path})")
    return manifest


def host_loop_only_sampling(family: str, sampler: dict[str, Any]) -> str | None:
    """The artifact's sampling option that only the per-step host loop runs (a fused graph samples from pure
    noise with its fixed steps), if any."""
    if family == "diffusion" and sampler.get("sampling_mode") == "warm_start":
        return "sampling_mode 'warm_start'"
    if family == "flow" and sampler.get("adaptive"):
        return "adaptive sampling"
    return None


def _positive_int(value: Any) -> bool:
    return type(value) is int and value > 0


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(_positive_int(d) for d in value)


def check_fields(manifest: dict[str, Any], path: Path) -> None:
    """The fields the runtime reads, with their types: a manifest that passes its own hash check can still be
    hand-edited or written by a broken tool, and must fail here, naming the field, not later in numpy."""

    def bad(field: str, expected: str) -> ArtifactError:
        got = "" if "." in field else f", got {manifest[field]!r}" if field in manifest else " (it is missing)"
        return ArtifactError(f"{path}: field {field!r} must be {expected}{got}")

    if manifest.get("family") not in FAMILIES:
        raise bad("family", f"one of {list(FAMILIES)}")
    family = manifest["family"]
    for field in ("n_obs_steps", "horizon", "n_action_steps"):
        if not _positive_int(manifest.get(field)):
            raise bad(field, "a positive integer")
    if manifest["n_action_steps"] > manifest["horizon"] - manifest["n_obs_steps"] + 1:
        raise bad("n_action_steps", "at most horizon - n_obs_steps + 1")
    fps = manifest.get("fps")
    if fps is not None and (type(fps) not in (int, float) or not 0 < fps < 1e6):
        raise bad("fps", "a positive number of actions per second, or null")
    config = manifest.get("policy_config")
    if isinstance(config, dict):  # what the policy was trained as: the serving fields must agree with it
        if config.get("type") and config["type"] != family:
            raise bad("family", f"the policy_config's type {config.get('type')!r}")
        for field in ("n_obs_steps", "horizon", "n_action_steps", "fps"):
            if config.get(field) is not None and manifest.get(field) != config[field]:
                raise bad(field, f"policy_config.{field} = {config[field]!r}, the value the policy was trained with")
    features = manifest.get("input_features")
    if not isinstance(features, list) or not features:
        raise bad("input_features", "a non-empty list of {key, shape, input}")
    for i, f in enumerate(features):
        if not (isinstance(f, dict) and isinstance(f.get("key"), str) and isinstance(f.get("input"), str)
                and _shape(f.get("shape"))):
            raise bad(f"input_features.{i}", f"{{key: str, shape: [positive ints], input: str}}, got {f!r}")
    action = manifest.get("action_feature")
    if not (isinstance(action, dict) and isinstance(action.get("key"), str) and _shape(action.get("shape"))):
        raise bad("action_feature", "{key: str, shape: [positive ints]}")
    normalization = manifest.get("normalization")
    if not (isinstance(normalization, dict) and isinstance(normalization.get("modes"), dict)):
        raise bad("normalization", "{modes: {feature: mode}, stats: {feature: {...}}}")
    modes, stats = normalization["modes"], normalization.get("stats") or {}
    for key, shape in [(f["key"], f["shape"]) for f in features] + [(action["key"], action["shape"])]:
        mode = modes.get(key)
        if mode not in NORMALIZATION_STATS:
            raise bad(f"normalization.modes.{key}", f"one of {list(NORMALIZATION_STATS)} (every feature needs a mode)")
        for name in NORMALIZATION_STATS[mode]:
            value = stats.get(key, {}).get(name) if isinstance(stats.get(key), dict) else None
            try:
                fits = np.broadcast_shapes(np.shape(np.asarray(value, dtype=np.float64)), tuple(shape)) == tuple(shape)
            except (TypeError, ValueError):
                fits = False
            if value is None or not fits:
                raise bad(f"normalization.stats.{key}.{name}", f"numbers broadcastable to the feature's shape {shape}")
            if value is not None and fits and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
                raise bad(f"normalization.stats.{key}.{name}", "finite numbers")
        if mode in ("min_max", "mean_std"):
            a, b = (np.asarray(stats[key][n], dtype=np.float64) for n in NORMALIZATION_STATS[mode])
            if mode == "min_max" and (a > b).any():
                raise bad(f"normalization.stats.{key}.min", "at most normalization.stats.{key}.max")
            if mode == "mean_std" and (b < 0).any():
                raise bad(f"normalization.stats.{key}.std", "non-negative")
    graphs, files = manifest.get("graphs"), manifest["files"]
    if not isinstance(graphs, dict) or not graphs:
        raise bad("graphs", "a non-empty mapping of graph kind to {files: {role: file}}")
    for kind, graph in graphs.items():
        if kind not in GRAPH_KINDS:
            raise bad(f"graphs.{kind}", f"one of the graph kinds {list(GRAPH_KINDS)}")
        roles = graph.get("files") if isinstance(graph, dict) else None
        if not isinstance(roles, dict) or not roles:
            raise bad(f"graphs.{kind}.files", "a non-empty mapping of role to file")
        if set(roles) != GRAPH_ROLES[family][kind]:
            raise bad(f"graphs.{kind}.files", f"the roles {sorted(GRAPH_ROLES[family][kind])} a {family} policy's "
                      f"{kind} graph has, got {sorted(roles)}")
        for role, file in roles.items():
            if file not in files:
                raise bad(f"graphs.{kind}.files.{role}", f"a file the manifest's 'files' hashes ({file!r} is not)")
    sampler = manifest.get("sampler", {})
    if not isinstance(sampler, dict):
        raise bad("sampler", "a mapping")
    for name in SAMPLER_FIELDS[family]:
        if name not in sampler:
            raise bad(f"sampler.{name}", f"present (a {family} policy's runtime reads it)")


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_FILE", "MANIFEST_HASH_FILE", "SUPPORTED_VERSIONS", "ArtifactError",
           "read_manifest", "sha256_file", "write_manifest"]
