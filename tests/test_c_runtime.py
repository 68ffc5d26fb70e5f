"""CPolicy: a C export compiled for the host and called through ctypes, behind the policy interface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.export.c_export import c_gaussian, export_c, reference_actions, sample_observations
from robopolicy.runtime import ArtifactError, CPolicy
from robopolicy.runtime.c_policy import build_library
from tests.test_c_export import FLOAT_BOUND, INT8_BOUND_VS_DEQUANT, make_flow, make_policy, make_sfp

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="no host C compiler")
REPO = Path(__file__).resolve().parents[1]


def history(policy, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """(B, To, size) per feature, in robot units over the normalization range."""
    flat = sample_observations(policy, batch * policy.config.n_obs_steps, seed=seed)
    step = flat.reshape(batch, policy.config.n_obs_steps, -1)
    out, offset = {}, 0
    for f in policy.config.input_features:
        size = int(np.prod(f.shape))
        out[f.key] = step[..., offset:offset + size].astype(np.float32)
        offset += size
    return out


def torch_chunk(policy, hist: dict[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        normalized = {k: policy.normalizer.normalize(k, torch.from_numpy(v)) for k, v in hist.items()}
        kwargs = {} if noise is None else {"noise": torch.from_numpy(noise)}
        return policy.normalizer.unnormalize(policy.action_key, policy.generate_actions(normalized, **kwargs)).numpy()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_chunks_and_queued_actions_match_torch(tmp_path, activation):
    policy = make_policy(activation=activation)
    policy.config.n_action_steps = 2
    runtime = CPolicy.load(export_c(policy, tmp_path / "c"))
    assert (runtime.family, runtime.n_obs_steps, runtime.horizon, runtime.n_action_steps) == ("mlp", 2, 4, 2)
    hist = history(policy, batch=5)
    got = runtime.predict_chunk(hist)
    assert got.shape == (5, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, torch_chunk(policy, hist), atol=FLOAT_BOUND, rtol=0)
    # select_action: the same To queue (first observation repeated) and Ta queue as the torch policy
    policy.reset()
    runtime.reset()
    rng = np.random.default_rng(1)
    for step in range(5):
        assert runtime.needs_new_chunk == (step % 2 == 0)
        observation = {k: rng.uniform(-1, 1, v.shape[2:]).astype(np.float32) for k, v in hist.items()}
        expected = np.asarray(policy.select_action({k: torch.from_numpy(v) for k, v in observation.items()}))
        np.testing.assert_allclose(runtime.select_action(observation), expected, atol=FLOAT_BOUND, rtol=0)


def test_hypotheses_and_int8(tmp_path):
    policy = make_policy(n_hypotheses=3)
    hist = history(policy, batch=4, seed=2)
    np.testing.assert_allclose(CPolicy.load(export_c(policy, tmp_path / "k3")).predict_chunk(hist),
                               torch_chunk(policy, hist), atol=FLOAT_BOUND, rtol=0)
    policy = make_policy()
    runtime = CPolicy.load(export_c(policy, tmp_path / "int8", int8=True))
    flat = np.concatenate([hist[f.key] for f in policy.config.input_features], axis=2).reshape(4, -1)
    first = runtime.predict_chunk(hist)[:, policy.config.n_obs_steps - 1]
    np.testing.assert_allclose(first, reference_actions(policy, flat, int8=True), atol=INT8_BOUND_VS_DEQUANT, rtol=0)


def test_flow_chunks_from_seeds_match_torch_and_repeat(tmp_path):
    policy = make_flow()
    runtime = CPolicy.load(export_c(policy, tmp_path / "c"))
    hist = history(policy, batch=3, seed=4)
    seeds = np.random.default_rng(7).integers(2 ** 32, size=3, dtype=np.uint32)  # row i's seed, as documented
    c = policy.config
    noise = np.stack([c_gaussian(s, c.horizon * c.action_dim) for s in seeds]).reshape(3, c.horizon, c.action_dim)
    got = runtime.predict_chunk(hist, rng=np.random.default_rng(7))
    np.testing.assert_allclose(got, torch_chunk(policy, hist, noise.astype(np.float32)), atol=FLOAT_BOUND, rtol=0)
    runtime.seed(3)
    first = runtime.predict_chunk(hist)
    runtime.seed(3)
    np.testing.assert_array_equal(runtime.predict_chunk(hist), first)
    assert np.abs(runtime.predict_chunk(hist) - first).max() > 1e-3  # the next seeds: other noise
    # batch 1 (fixed buffers) gives what row 0 of a batch gives from the same rng
    one = {k: v[:1] for k, v in hist.items()}
    np.testing.assert_array_equal(runtime.predict_chunk(one, rng=np.random.default_rng(7)), got[:1])


def test_library_is_cached_rebuilt_when_the_sources_change_and_built_elsewhere_when_read_only(tmp_path, monkeypatch):
    policy = make_policy()
    out = export_c(policy, tmp_path / "c")
    library = CPolicy.load(out).library_path
    built = library.stat().st_mtime_ns
    assert CPolicy.load(out).library_path == library and library.stat().st_mtime_ns == built
    with torch.no_grad():
        next(policy.parameters()).add_(0.5)
    export_c(policy, out)  # new weights, same directory
    runtime = CPolicy.load(out)
    assert runtime.library_path != library
    hist = history(policy, batch=2)
    np.testing.assert_allclose(runtime.predict_chunk(hist), torch_chunk(policy, hist), atol=FLOAT_BOUND, rtol=0)
    from robopolicy.runtime import c_policy

    monkeypatch.setattr(c_policy, "_writable", lambda path: False)  # a read-only export (root would write anyway)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elsewhere = CPolicy.load(out)
    assert elsewhere.library_path.parent == tmp_path / "cache" / "robopolicy" / "c"
    assert elsewhere.library_path.name == runtime.library_path.name
    assert (elsewhere.library_path.parent.stat().st_mode & 0o777) == 0o700
    np.testing.assert_array_equal(elsewhere.predict_chunk(hist), runtime.predict_chunk(hist))


@pytest.fixture()
def read_only_export(tmp_path, monkeypatch):
    """A C export that cannot be built in place (so the per-user cache is used), and an empty cache root."""
    from robopolicy.runtime import c_policy

    out = export_c(make_policy(), tmp_path / "c")
    monkeypatch.setattr(c_policy, "_writable", lambda path: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return out, tmp_path / "cache" / "robopolicy" / "c"


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_cache_others_can_write_is_refused(read_only_export, mode):
    """Issue 27: another user could create the cache first and plant a library loaded through ctypes."""
    out, cache = read_only_export
    cache.mkdir(parents=True)
    cache.chmod(mode)
    with pytest.raises(ArtifactError, match=f"{cache}.*mode {mode:04o}.*group or others"):
        CPolicy.load(out)


def test_a_cache_of_another_user_is_refused(read_only_export, monkeypatch):
    out, cache = read_only_export
    cache.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(cache).st_uid + 1)  # as if another user had created it
    with pytest.raises(ArtifactError, match="owned by uid .* not by this user"):
        CPolicy.load(out)


def test_a_planted_library_is_never_loaded(read_only_export, monkeypatch):
    """A library with the cache key's name that others can write (or that another user owns) is refused."""
    out, cache = read_only_export
    library = build_library(out)  # the name a planted library would take
    assert library.parent == cache
    library.chmod(0o777)
    with pytest.raises(ArtifactError, match="library has mode 0777"):
        CPolicy.load(out)
    library.chmod(0o755)
    assert CPolicy.load(out).library_path == library
    real_euid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real_euid + 1)
    with pytest.raises(ArtifactError, match="not by this user"):
        CPolicy.load(out)


def test_a_symlinked_cache_is_refused(read_only_export, tmp_path):
    out, cache = read_only_export
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    cache.parent.mkdir(parents=True, mode=0o700)
    cache.symlink_to(elsewhere)
    with pytest.raises(ArtifactError, match="symlink"):
        CPolicy.load(out)


def test_bad_exports_and_inputs_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ArtifactError, match="no export.json"):
        CPolicy.load(tmp_path)
    sfp = export_c(make_sfp(), tmp_path / "sfp")
    with pytest.raises(ArtifactError, match="family 'sfp' does not run on the host from C"):
        CPolicy.load(sfp)
    policy = make_policy()
    out = export_c(policy, tmp_path / "c")
    meta = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "n_action_steps"}))
    with pytest.raises(ArtifactError, match=r"fields \['n_action_steps'\] are missing"):
        CPolicy.load(out)
    for field, value in (("horizon", 8), ("obs_dim", 8), ("obs_layout", [{"key": "observation.state", "size": 5}])):
        (out / "export.json").write_text(json.dumps({**meta, field: value}))  # disagrees with the compiled C
        with pytest.raises(ArtifactError, match="disagrees with policy.h"):
            CPolicy.load(out)
    (out / "export.json").write_text(json.dumps({**meta, "obs_layout": "observation.state"}))
    with pytest.raises(ArtifactError, match="malformed field"):
        CPolicy.load(out)
    (out / "export.json").write_text("{oops")
    with pytest.raises(ArtifactError, match="export.json: invalid JSON"):
        CPolicy.load(out)
    (out / "export.json").write_text(json.dumps(meta))
    source = (out / "policy.c").read_text()
    (out / "policy.c").write_text(source + "\nthis is not C;\n")
    with pytest.raises(ArtifactError, match=r"policy.c: .*failed \(exit"):
        CPolicy.load(out)
    (out / "policy.c").write_text(source)
    with pytest.raises(RuntimeError, match="needs a C compiler"):
        CPolicy.load(out, compiler="no-such-cc")
    runtime = CPolicy.load(out)
    hist = history(policy, batch=2)
    with pytest.raises(KeyError, match="lacks feature 'observation.target'"):
        runtime.predict_chunk({"observation.state": hist["observation.state"]})
    with pytest.raises(ValueError, match=r"observation 'observation.state': expected \(B, 2, 5\)"):
        runtime.predict_chunk({**hist, "observation.state": hist["observation.state"][:, :1]})
    with pytest.raises(ValueError, match="batch sizes differ"):
        runtime.predict_chunk({**hist, "observation.target": hist["observation.target"][:1]})
    bad = {k: v.copy() for k, v in hist.items()}
    bad["observation.state"][1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="refused observation row 1"):
        runtime.predict_chunk(bad)
    with pytest.raises(ValueError, match="draws its own noise"):
        runtime.predict_chunk(hist, noise=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="observation 'observation.target': expected"):
        runtime.select_action({"observation.state": np.zeros(5), "observation.target": np.zeros(4)})
    with pytest.raises(ValueError, match=r"n_action_steps must be in \[1, 3\]"):
        runtime.set_n_action_steps(4)


def test_a_compiler_that_rejects_the_host_flags_gets_portable_ones(tmp_path):
    policy = make_policy()
    out = export_c(policy, tmp_path / "c")
    picky = tmp_path / "picky-cc"
    picky.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -march=native ] && "
                     "{ echo 'error: unsupported -march' >&2; exit 1; }; done\n"
                     f"exec {shutil.which('gcc') or shutil.which('cc')} \"$@\"\n")
    picky.chmod(0o755)
    with pytest.warns(UserWarning, match="rejected .*-march=native.*built with -O2"):
        runtime = CPolicy.load(out, compiler=str(picky))
    hist = history(policy, batch=2)
    np.testing.assert_allclose(runtime.predict_chunk(hist), torch_chunk(policy, hist), atol=FLOAT_BOUND, rtol=0)


def test_build_refuses_a_directory_without_sources(tmp_path):
    with pytest.raises(ArtifactError, match="needs policy.c and policy.h"):
        build_library(tmp_path)


def test_cli_export_serve_and_eval_a_c_export(tmp_path):
    """`robopolicy export format=c`, then the same directory served (policy adapter) and evaluated on PushT."""
    from robopolicy.cli import cmd_eval, cmd_export
    from robopolicy.configs import load_config
    from robopolicy.data.reader import LeRobotDataset
    from robopolicy.deploy.adapter import load_policy_adapter
    from robopolicy.train.trainer import make_policy_for_dataset
    from tests.conftest import linear_mapping_episodes, write_dataset

    dataset = LeRobotDataset(write_dataset(tmp_path / "ds", linear_mapping_episodes(n_episodes=2)))
    policy = make_policy_for_dataset({"type": "mlp", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
                                      "hidden_dims": [16, 16]}, dataset, ["observation.state"], "action", "min_max")
    policy.save(tmp_path / "policy")
    out = cmd_export(load_config("export", [f"checkpoint={tmp_path / 'policy'}", "format=c", "fps=20",
                                            f"output={tmp_path / 'c'}"]))
    meta = json.loads((out / "export.json").read_text())
    assert meta["n_action_steps"] == 4 and meta["fps"] == 20.0 and meta["int8"] is False
    served = load_policy_adapter(out)
    assert served.spec.fps == 20.0 and served.spec.n_action_steps == 4
    hist = {"observation.state": np.random.default_rng(0).uniform(-1, 1, (2, 2)).astype(np.float32)}
    np.testing.assert_allclose(served.predict(hist), torch_chunk(policy.eval(), {"observation.state": hist[
        "observation.state"][None]})[0], atol=FLOAT_BOUND, rtol=0)
    with pytest.raises(ValueError, match="takes precision fp32 or int8"):
        cmd_export(load_config("export", [f"checkpoint={tmp_path / 'policy'}", "format=c", "precision=fp16"]))

    def run(name: str, *extra: str) -> dict:
        return cmd_eval(load_config("eval", [f"checkpoint={out}", "n_episodes=2", "n_workers=1", "n_videos=0",
                                             "max_steps=12", f"output_dir={tmp_path / name}", *extra]))

    report = run("a", "n_action_steps=2")
    assert report["n_episodes"] == 2 and [e["chunk_latency_ms"]["n"] for e in report["episodes"]] == [6, 6]
    with pytest.raises(ValueError, match="sampler is compiled in"):
        run("b", "num_inference_steps=3")


def test_c_policy_runs_with_torch_blocked(tmp_path):
    from tests.test_runtime_no_torch import BLOCK_TORCH

    policy = make_policy()
    out = export_c(policy, tmp_path / "c")
    code = BLOCK_TORCH + f"""
import numpy as np
from robopolicy.runtime.c_policy import CPolicy
p = CPolicy.load({str(out)!r})
a = p.select_action({{"observation.state": np.zeros(5), "observation.target": np.zeros(3)}})
assert a.shape == (4,) and np.isfinite(a).all()
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr
