"""ONNX artifacts: the manifest is hashed, and everything a server needs is validated at load (issue 27 item 5)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.deploy.adapter import load_policy_adapter
from robopolicy.export import export_policy
from robopolicy.runtime import ArtifactError, OnnxPolicy, sha256_file
from robopolicy.runtime.manifest import MANIFEST_HASH_FILE, write_manifest
from tests.test_export import make_policy


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    from tests.conftest import linear_mapping_episodes, write_dataset

    root = tmp_path_factory.mktemp("artifacts")
    dataset = write_dataset(root / "ds", linear_mapping_episodes())
    torch.set_num_threads(1)
    return {name: export_policy(make_policy(dataset, name), root / name) for name in ("mlp", "diffusion", "sfp_d")}


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def test_the_manifest_is_covered_by_its_hash_file(exported, tmp_path):
    d = _copy(exported["mlp"], tmp_path)
    # sha256sum's own format: an operator can check an artifact with coreutils alone.
    assert subprocess.run(["sha256sum", "-c", MANIFEST_HASH_FILE], cwd=d, capture_output=True).returncode == 0
    m = _manifest(d)
    m["normalization"]["stats"]["action"]["max"] = [2 * v for v in m["normalization"]["stats"]["action"]["max"]]
    (d / "manifest.json").write_text(json.dumps(m, indent=2))  # doubled action statistics: valid fields
    with pytest.raises(ArtifactError, match=r"manifest\.json: hash mismatch, manifest altered"):
        OnnxPolicy.load(d)
    (d / MANIFEST_HASH_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json\.sha256: missing, so manifest\.json is not covered"):
        OnnxPolicy.load(d)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(fps=50), r"field 'fps' must be policy_config\.fps = 10\.0"),
    (lambda m: m.update(horizon=12), r"field 'horizon' must be policy_config\.horizon = 8"),
    (lambda m: m.update(family="flow"), r"field 'family' must be the policy_config's type 'diffusion'"),
    (lambda m: m["sampler"].pop("alphas_cumprod"), r"field 'sampler\.alphas_cumprod' must be present"),
    (lambda m: m["graphs"]["per_step"]["files"].pop("step"), r"field 'graphs\.per_step\.files' must be the roles"),
    (lambda m: m["normalization"]["stats"]["action"].update(min=[float("nan"), 0.0]),
     r"field 'normalization\.stats\.action\.min' must be finite numbers"),
    (lambda m: m["normalization"]["stats"]["action"].update(min=[9.0, 9.0]),
     r"field 'normalization\.stats\.action\.min' must be at most"),
])
def test_serving_fields_are_checked_against_the_policy_at_load(exported, tmp_path, edit, message):
    """Each of these loaded before and failed (or silently misbehaved) only when a request came in."""
    d = _copy(exported["diffusion"], tmp_path)
    m = _manifest(d)
    edit(m)
    write_manifest(d, m)  # hashed again: these are consistent artifacts with inconsistent contents
    with pytest.raises(ArtifactError, match=r"manifest\.json: " + message):
        OnnxPolicy.load(d)
    with pytest.raises(ArtifactError, match=message):
        load_policy_adapter(d)  # what `robopolicy serve` calls: it refuses to start


def test_a_swapped_graph_with_its_hash_updated_fails_at_load(exported, tmp_path):
    d = _copy(exported["diffusion"], tmp_path)
    shutil.copy(d / "step.onnx", d / "encoder.onnx")
    m = _manifest(d)
    m["files"]["encoder.onnx"] = sha256_file(d / "encoder.onnx")
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match=r"the encoder graph takes inputs \['cond', 't', 'x'\], a diffusion "
                                            r"policy's encoder graph takes \['observation__state'\]"):
        OnnxPolicy.load(d, graph="per_step")


def test_a_horizon_the_graphs_do_not_produce_fails_at_load(exported, tmp_path):
    """Without policy_config to compare against, the graphs' own output shapes catch a wrong horizon."""
    d = _copy(exported["mlp"], tmp_path)
    m = _manifest(d)
    del m["policy_config"]
    m["horizon"] = 12
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match=r"the policy graph returns \(batch, 4, 2\), the manifest's horizon 12"):
        OnnxPolicy.load(d)


def test_sfp_graphs_pass_their_signature_checks(exported):
    runtime = OnnxPolicy.load(exported["sfp_d"], graph="per_step")
    fused = OnnxPolicy.load(exported["sfp_d"], graph="fused")
    history = {"observation.state": np.zeros((1, runtime.n_obs_steps, 2), np.float32)}
    assert runtime.predict_chunk(history).shape == fused.predict_chunk(history).shape


def test_export_refuses_an_fps_that_contradicts_the_policy(exported, lowdim_dataset, tmp_path):
    policy = make_policy(lowdim_dataset, "mlp")
    with pytest.raises(ValueError, match=r"fps=50 contradicts the policy's fps=10\.0"):
        export_policy(policy, tmp_path / "x", fps=50)


def test_the_adapter_runs_a_check_prediction_at_load(exported, tmp_path, monkeypatch):
    """A server learns at load, not at its first request, that the backend cannot produce a chunk."""
    adapter = load_policy_adapter(exported["mlp"])
    assert adapter.spec.horizon == 4 and adapter.spec.fps == 10.0
    monkeypatch.setattr(OnnxPolicy, "predict_chunk", lambda self, obs, **kw: np.full((1, 4, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"mlp: the load-time check prediction .* not finite"):
        load_policy_adapter(exported["mlp"])
