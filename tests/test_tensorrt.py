"""TensorRT engines: built from the artifact's graphs and run by OnnxPolicy through TensorRT's own runtime.

Without a GPU (CI, this machine) the engine logic runs against fakes of ``tensorrt`` and cuda-python
(tests/fake_tensorrt.py: the engine is the graph TensorRT was handed, run on the CPU): build settings, FP16
graphs, the engine index and its stale-engine checks, device buffers and shapes, and the buffer plumbing through
the policy interface (the fake engine runs ONNX Runtime on the graph, so those tests check that inputs, outputs,
batch shapes and FP16 casts travel correctly, not TensorRT's numerics). Only the tests marked ``gpu`` compare real
engines with torch; they skip without CUDA and TensorRT.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from robopolicy.export import export_policy
from robopolicy.runtime import ArtifactError, OnnxPolicy
from robopolicy.runtime import tensorrt_engines as engines_module
from robopolicy.runtime.tensorrt_engines import (
    ENGINES_FILE,
    TensorRTSession,
    build_engines,
    read_engines_index,
    tensorrt_available,
)
from tests import fake_tensorrt
from tests.test_export import TOL, make_policy, noise_shape, random_history, torch_chunk

# FP16 engines: float16 weights and activations through up to 10 unrolled steps, against float32 torch.
FP16_TOL = 2e-2
PARITY_FAMILIES = ["diffusion", "flow_unet", "flow_transformer", "sfp_d", "act", "mlp"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from tests.conftest import linear_mapping_episodes, write_dataset

    root = tmp_path_factory.mktemp("trt")
    dataset = write_dataset(root / "ds", linear_mapping_episodes())
    torch.set_num_threads(1)
    return {name: (policy := make_policy(dataset, name), export_policy(policy, root / name, fps=10))
            for name in PARITY_FAMILIES}


@pytest.fixture
def fake_trt(monkeypatch):
    return fake_tensorrt.install(monkeypatch)


def _chunks(policy, path, providers, graph, tmp_path, **load):
    runtime = OnnxPolicy.load(path, graph=graph, providers=providers, trt_cache_dir=tmp_path / "engines", **load)
    history = random_history(policy, seed=1)
    noise = None if policy.name in ("act", "mlp") else np.random.default_rng(2).standard_normal(
        noise_shape(policy)).astype(np.float32)
    policy.reset()
    return runtime, torch_chunk(policy, history, noise), runtime.predict_chunk(history, noise=noise)


@pytest.mark.parametrize("name", PARITY_FAMILIES)
@pytest.mark.parametrize("graph", ["per_step", "fused"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fake_engine_buffer_plumbing_through_the_policy_interface(artifacts, fake_trt, name, graph, precision,
                                                                  tmp_path):
    """Inputs, outputs, shapes and FP16 casts reach the (fake) engine and come back in place; the fake engine is
    ONNX Runtime on the graph, so this is not a TensorRT parity check (test_real_engines_match_torch is)."""
    policy, path = artifacts[name]
    provider = "tensorrt_engine" if precision == "fp32" else "tensorrt_engine_fp16"
    runtime, expected, got = _chunks(policy, path, (provider,), graph, tmp_path)
    assert runtime.providers == [f"TensorRT {fake_trt.__version__} engine ({precision})"]
    assert got.shape == expected.shape and np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=TOL if precision == "fp32" else FP16_TOL, rtol=0)
    if precision == "fp16":  # the FP16 graph really ran in half precision: not bit-close to float32
        assert np.abs(got - expected).max() > 1e-6


def test_build_settings(artifacts, fake_trt, tmp_path):
    _, path = artifacts["diffusion"]
    build_engines(path, tmp_path / "fp32", precision="fp32", max_batch=4, opt_batch=2)
    fp32 = fake_trt.builds[-1]
    assert fp32["strongly_typed"] and not fp32["tf32"]  # TF32 would cost ~1e-3, outside the parity bound
    encoder_inputs = {n: s for n, s in fp32["profile"].items()}
    assert encoder_inputs and all(low[0] == 1 and opt[0] == 2 and high[0] == 4 and low[1:] == high[1:]
                                  for low, opt, high in encoder_inputs.values())
    build_engines(path, tmp_path / "fp16", precision="fp16", max_batch=4)
    fp16 = fake_trt.builds[-1]
    assert fp16["strongly_typed"] and onnx.TensorProto.FLOAT16 in fp16["initializer_types"]
    half = onnx.load_from_string(engines_module.fp16_graph(path / "fused.onnx"))
    elem = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]}
    assert set(elem.values()) == {onnx.TensorProto.FLOAT}  # the host feeds and reads float32
    casts_to_fp32 = {n.output[0] for n in half.graph.node
                     if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT}
    norms = [n for n in half.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(n.input[0] in casts_to_fp32 for n in norms)  # normalizations stay float32
    index = read_engines_index(tmp_path / "fp16")["precisions"]["fp16"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert index["gpu"] == "Fake GPU (sm_90)" and index["tensorrt_version"] == fake_trt.__version__
    assert index["batch"] == [1, 1, 4]
    assert {n: e["source_sha256"] for n, e in index["engines"].items()} == {
        n: d for n, d in manifest["files"].items() if n.endswith(".onnx")}


def test_engines_are_reused_and_stale_ones_rebuilt(artifacts, fake_trt, tmp_path):
    policy, path = artifacts["mlp"]
    cache = tmp_path / "engines"

    def load(providers=("tensorrt_engine",)):
        before = len(fake_trt.builds)
        OnnxPolicy.load(path, providers=providers, trt_cache_dir=cache)
        return len(fake_trt.builds) - before

    assert load() == 1  # policy.onnx
    assert load() == 0  # reused
    assert load(providers=(("tensorrt_engine", {"max_batch": 4}),)) == 0  # batch 8 covers 4
    assert load(providers=(("tensorrt_engine", {"max_batch": 16}),)) == 1
    assert read_engines_index(cache)["precisions"]["fp32"]["batch"] == [1, 1, 16]
    fake_trt.__version__ = "11.1.0-fake"  # another TensorRT cannot deserialize the old engine
    assert load() == 1
    fake_trt.cuda.gpu_name = "Other GPU (sm_87)"
    assert load() == 1
    engine = cache / "policy.fp32.engine"
    engine.write_bytes(engine.read_bytes() + b"x")  # altered
    assert load() == 1
    index = read_engines_index(cache)
    index["precisions"]["fp32"]["engines"]["policy.onnx"]["source_sha256"] = "0" * 64  # another graph's engine
    (cache / ENGINES_FILE).write_text(json.dumps(index))
    assert load() == 1
    assert load(providers=("tensorrt_engine_fp16",)) == 1  # each precision has its own engines
    assert set(read_engines_index(cache)["precisions"]) == {"fp32", "fp16"}
    (cache / ENGINES_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="engines.json: invalid JSON"):
        load()


def test_session_shapes_batches_and_buffers(artifacts, fake_trt, tmp_path):
    policy, path = artifacts["diffusion"]
    runtime = OnnxPolicy.load(path, graph="fused", providers=(("tensorrt_engine", {"max_batch": 3}),),
                              trt_cache_dir=tmp_path)
    reference = OnnxPolicy.load(path, graph="fused")
    for batch in (1, 3, 2):  # buffers grow for 3 and are reused for 2
        history = random_history(policy, batch=batch, seed=batch)
        noise = np.random.default_rng(batch).standard_normal(noise_shape(policy, batch)).astype(np.float32)
        np.testing.assert_allclose(runtime.predict_chunk(history, noise=noise),
                                   reference.predict_chunk(history, noise=noise), atol=1e-6, rtol=0)
    session = runtime._sessions["fused"]
    assert isinstance(session, TensorRTSession)
    with pytest.raises(ValueError, match="batch 4 is outside the engine's profile 1..3"):
        runtime.predict_chunk(random_history(policy, batch=4), noise=np.zeros(noise_shape(policy, 4), np.float32))
    name = session.input_names[0]
    good = {n: np.zeros([1 if d == "batch" else d for d in a.shape], np.float32) for n, a in
            zip(session.input_names, session.get_inputs())}
    with pytest.raises(ValueError, match=f"input '{name}' must be"):
        session.run(None, {**good, name: np.zeros((1, 99), np.float32)})
    with pytest.raises(ValueError, match="missing inputs"):
        session.run(None, {})
    allocated = set(fake_trt.cuda.memory)
    session.close()
    assert not allocated & set(fake_trt.cuda.memory)  # its device buffers were freed


def test_select_action_and_streaming_run_on_engines(artifacts, fake_trt, tmp_path):
    policy, path = artifacts["sfp_d"]
    engines = OnnxPolicy.load(path, providers=("tensorrt_engine",), trt_cache_dir=tmp_path)
    cpu = OnnxPolicy.load(path)
    rng = np.random.default_rng(0)
    for _ in range(5):
        observation = {"observation.state": rng.uniform(-1, 1, 2).astype(np.float32)}
        noise = rng.standard_normal(noise_shape(policy, 1)).astype(np.float32) if cpu.needs_new_chunk else None
        np.testing.assert_allclose(engines.select_action(observation, noise=noise),
                                   cpu.select_action(observation, noise=noise), atol=1e-6)


def test_engine_provider_errors(artifacts, monkeypatch, tmp_path):
    from robopolicy.cli import cmd_export
    from robopolicy.configs import load_config

    policy, path = artifacts["mlp"]
    policy.save(tmp_path / "policy")
    export = [f"checkpoint={tmp_path / 'policy'}", f"output={tmp_path / 'artifact'}", "format=tensorrt"]
    if not tensorrt_available():
        with pytest.raises(RuntimeError, match="pip install 'robopolicy\\[tensorrt\\]'"):
            OnnxPolicy.load(path, providers=("tensorrt_engine",))
        with pytest.raises(RuntimeError, match="`import tensorrt` failed"):
            cmd_export(load_config("export", export))
        with pytest.raises(RuntimeError, match="TensorRT"):
            build_engines(path, tmp_path / "engines")
        assert not (tmp_path / "artifact").exists()  # said before exporting anything
    fake = fake_tensorrt.install(monkeypatch)
    with pytest.raises(ValueError, match="cannot be mixed"):
        OnnxPolicy.load(path, providers=("tensorrt_engine", "cpu"))
    fake.cuda.devices = 0
    with pytest.raises(RuntimeError, match="cudaGetDeviceCount"):
        OnnxPolicy.load(path, providers=("tensorrt_engine",), trt_cache_dir=tmp_path)
    fake.cuda.devices = 1
    with pytest.raises(ValueError, match="precision must be one of"):
        engines_module.build_engine(path / "policy.onnx", tmp_path / "x.engine", precision="int8")
    with pytest.raises(ValueError, match="export: precision must be one of"):
        cmd_export(load_config("export", [*export, "precision=int8"]))


def test_cli_export_format_tensorrt(artifacts, fake_trt, tmp_path):
    """``robopolicy export format=tensorrt``: the ONNX artifact, then engines recorded in engines.json."""
    from robopolicy.cli import cmd_export
    from robopolicy.configs import load_config

    policy, _ = artifacts["mlp"]
    policy.save(tmp_path / "policy")
    out = cmd_export(load_config("export", [f"checkpoint={tmp_path / 'policy'}", f"output={tmp_path / 'artifact'}",
                                            "format=tensorrt", "precision=fp16", "max_batch=2"]))
    index = read_engines_index(out / "tensorrt")["precisions"]["fp16"]
    assert index["batch"] == [1, 1, 2] and (out / "tensorrt" / index["engines"]["policy.onnx"]["file"]).is_file()


# ---- a real GPU under a fake TensorRT ------------------------------------------------------------------------
# TensorRT's builder libraries are not on PyPI (NVIDIA's index serves them), so a GPU machine may have CUDA and
# cuda-python but no TensorRT. These run robopolicy's device side for real: cudaMalloc'd buffers that grow with
# the batch, host<->device copies on its stream, the stream handle handed to the engine, and the frees.

real_cuda = pytest.mark.skipif(fake_tensorrt.real_cuda_runtime() is None,
                               reason="needs cuda-python and a CUDA GPU (none on this machine)")


@real_cuda
@pytest.mark.parametrize("name", PARITY_FAMILIES)
@pytest.mark.parametrize("graph", ["per_step", "fused"])
def test_fake_engine_buffers_travel_through_real_device_memory(artifacts, monkeypatch, name, graph, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, real_cuda=True)
    policy, path = artifacts[name]
    _, expected, got = _chunks(policy, path, ("tensorrt_engine",), graph, tmp_path)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert read_engines_index(tmp_path / "engines")["precisions"]["fp32"]["gpu"] == trt.cuda.gpu_name


@real_cuda
def test_real_device_buffers_grow_and_are_freed(artifacts, monkeypatch, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, real_cuda=True)
    cudart = trt.cuda.cudart
    policy, path = artifacts["diffusion"]
    runtime = OnnxPolicy.load(path, graph="fused", providers=(("tensorrt_engine", {"max_batch": 3}),),
                              trt_cache_dir=tmp_path)
    reference = OnnxPolicy.load(path, graph="fused")
    session = runtime._sessions["fused"]
    sizes = []
    for batch in (1, 3, 2):  # buffers are reallocated for 3 and reused for 2
        history = random_history(policy, batch=batch, seed=batch)
        noise = np.random.default_rng(batch).standard_normal(noise_shape(policy, batch)).astype(np.float32)
        np.testing.assert_allclose(runtime.predict_chunk(history, noise=noise),
                                   reference.predict_chunk(history, noise=noise), atol=1e-6, rtol=0)
        sizes.append({name: size for name, (_, size) in session._buffers.items()})
    assert sizes[0] and all(sizes[1][n] == 3 * sizes[0][n] for n in sizes[0]) and sizes[2] == sizes[1]
    live = [pointer for pointer, _ in session._buffers.values()]
    for other in runtime._sessions.values():
        other.close()
    session.close()  # idempotent
    for pointer in live:  # already freed: a second free is an error
        assert int(cudart.cudaFree(pointer)[0]) != 0


# ---- real GPUs ---------------------------------------------------------------------------------------------

def _missing() -> str:
    try:
        engines_module.import_tensorrt()
    except RuntimeError as e:
        return str(e).split(". ")[0]  # what is missing here: the tensorrt package, cuda-python or a GPU
    return ""


gpu = pytest.mark.skipif(not tensorrt_available(), reason=f"{_missing()}; tests/fake_tensorrt.py covers the logic "
                         "without TensorRT")


@gpu
@pytest.mark.parametrize("name", PARITY_FAMILIES)
@pytest.mark.parametrize("graph", ["per_step", "fused"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engines_match_torch(artifacts, name, graph, precision, tmp_path):
    policy, path = artifacts[name]
    provider = "tensorrt_engine" if precision == "fp32" else "tensorrt_engine_fp16"
    _, expected, got = _chunks(policy, path, (provider,), graph, tmp_path)
    np.testing.assert_allclose(got, expected, atol=TOL if precision == "fp32" else FP16_TOL, rtol=0)


@pytest.mark.skipif("TensorrtExecutionProvider" not in __import__("onnxruntime").get_available_providers() or
                    not tensorrt_available(), reason="needs onnxruntime-gpu with TensorRT and a CUDA GPU")
@pytest.mark.parametrize("name", ["diffusion", "act"])
def test_onnxruntime_tensorrt_provider_matches_torch(artifacts, name, tmp_path):
    policy, path = artifacts[name]
    runtime, expected, got = _chunks(policy, path, ("tensorrt", "cuda", "cpu"), "fused", tmp_path)
    assert runtime.providers[0] == "TensorrtExecutionProvider"
    # ONNX Runtime's TensorRT provider has no switch for TensorRT's TF32 (on by default since Ampere, ~1e-3);
    # tensorrt_engine turns it off and is held to the fp32 bound above.
    np.testing.assert_allclose(got, expected, atol=10 * TOL, rtol=0)


def test_onnxruntime_gpu_provider_options(monkeypatch, tmp_path):
    """ONNX Runtime's CUDA provider runs with TF32 off (fp32 parity); its TensorRT provider gets the engine cache."""
    import onnxruntime

    from robopolicy.runtime import onnx_policy

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_policy.resolve_providers(("cuda", "cpu")) == [("CUDAExecutionProvider", {"use_tf32": 0}),
                                                              ("CPUExecutionProvider", {})]
    (name, options), *_ = onnx_policy.resolve_providers(("tensorrt", "cuda"), trt_cache_dir=tmp_path, trt_fp16=True)
    assert name == "TensorrtExecutionProvider" and options == {
        "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path)}
