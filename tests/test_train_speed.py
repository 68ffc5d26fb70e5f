"""The training fast path (robopolicy/train/speed.py) computes what the eager loops compute, and checkpoints move
between the two paths."""

from __future__ import annotations

import copy
import shutil
from unittest.mock import create_autospec

import pytest
import torch

from robopolicy.policies import load_policy
from robopolicy.policies.networks.fast_ops import Mish
from robopolicy.train import speed
from robopolicy.train.trainer import Trainer
from robopolicy.utils.state_dict import strip_compile_prefix
from tests.test_policy import tiny_policy, train_cfg

LOOPS = {"compile": "false", "fused_optimizer": False, "ema_foreach": False}
needs_compiler = pytest.mark.skipif(speed.compile_unavailable_reason(torch.device("cpu")) is not None,
                                    reason="no C++ compiler for inductor")
# Inductor's first compile of even the tiny U-Net (forward and backward) takes 30-100 s on 2 cores: these two run
# with ``-m slow`` (the fallback, fused-optimizer and prefix tests below stay in the default run).
compiles = pytest.mark.slow


def _fixed_batch(policy, n=64):  # the trainers' batch size below: one compiled graph serves both tests
    g = torch.Generator().manual_seed(0)
    state = torch.rand(n, policy.config.n_obs_steps, 2, generator=g) * 2 - 1
    action = torch.rand(n, policy.config.horizon, 2, generator=g) * 2 - 1
    return {"observation.state": state, "action": action}


@compiles
@needs_compiler
def test_compiled_network_gives_eager_loss_and_gradients(lowdim_dataset):
    """Tolerance: float32 rounding of a reordered reduction (inductor fuses GroupNorm's statistics): loss within
    1e-5 relative, gradients within 1e-4 absolute + 1e-3 relative."""
    eager = tiny_policy(lowdim_dataset)
    fast = copy.deepcopy(eager)
    assert speed.compile_network(fast)
    batch = _fixed_batch(eager)
    losses, grads = [], []
    for policy in (eager, fast):
        policy.train()
        loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(1))
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in policy.parameters()])
    assert fast.net._compiled_call_impl is not None  # the compiled path ran, not a silent fallback
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    for g_fast, g_eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_eager, rtol=1e-3, atol=1e-4)
    # compiling in place keeps the parameter names: the compiled policy's state dict is the eager one's
    assert list(fast.state_dict()) == list(eager.state_dict())


def test_fused_adamw_and_foreach_ema_follow_the_loops(lowdim_dataset, tmp_path):
    loops = Trainer(train_cfg(lowdim_dataset, tmp_path / "loops", steps=15, **LOOPS))
    fused = Trainer(train_cfg(lowdim_dataset, tmp_path / "fused", steps=15, compile="false"))
    assert fused.optimizer.defaults["fused"] and fused.ema.foreach
    assert not loops.optimizer.defaults["fused"] and not loops.ema.foreach
    for _ in range(15):
        loss_loops, _ = loops.train_step()
        loss_fused, _ = fused.train_step()
        assert loss_fused == pytest.approx(loss_loops, rel=1e-4, abs=1e-6)
    loops._sync_ema()
    fused._sync_ema()
    for a, b in zip(loops.policy.parameters(), fused.policy.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for a, b in zip(loops.ema_policy.parameters(), fused.ema_policy.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@compiles
@needs_compiler
def test_checkpoints_move_between_compiled_and_eager(lowdim_dataset, tmp_path):
    compiled = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=10, compile="true"))
    assert compiled.compiled
    compiled.fit()
    assert compiled.compile_s is not None
    # compiled -> eager: resume without compiling, same state, training goes on
    eager = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=20, resume=True, compile="false"))
    assert not eager.compiled and eager.step == 10
    for a, b in zip(compiled.policy.state_dict().values(), eager.policy.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    eager.fit()
    # eager -> compiled
    again = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=25, resume=True, compile="true"))
    assert again.compiled and again.step == 20
    for a, b in zip(eager.policy.state_dict().values(), again.policy.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    again.fit()
    assert load_policy(tmp_path / "run" / "policy").config.horizon == 4


def test_weights_saved_through_torch_compile_wrapper_load(lowdim_dataset, tmp_path):
    """A state dict taken from ``torch.compile(module)`` carries ``_orig_mod.`` in its keys; loading strips it."""
    policy = tiny_policy(lowdim_dataset)
    policy.net = torch.compile(policy.net)  # the wrapper (never called here, so nothing compiles)
    assert any("_orig_mod." in k for k in policy.state_dict())
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    for (k, a), b in zip(strip_compile_prefix(policy.state_dict()).items(), loaded.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=k)
    assert strip_compile_prefix({"net._orig_mod.w": 1, "_orig_mod.b": 2}) == {"net.w": 1, "b": 2}


def test_compile_without_a_compiler_trains_eagerly_and_says_so(lowdim_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=3, compile="true"))
    assert not trainer.compiled
    said = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "train.compile=true: inductor needs a C++ compiler" in said and "training in eager mode" in said
    trainer.fit()


def test_a_failing_compile_falls_back_to_the_same_eager_steps(lowdim_dataset, tmp_path, monkeypatch, capsys):
    def boom(graph, example_inputs):
        raise RuntimeError("no usable compiler")

    def compile_with_a_broken_backend(policy, mode):
        policy.net.compile(backend=boom)
        return True

    monkeypatch.setattr(speed, "compile_network", compile_with_a_broken_backend)
    broken = Trainer(train_cfg(lowdim_dataset, tmp_path / "broken", steps=4, compile="true"))
    # a compiled run's Mish is left to inductor, so the fallback trains on ATen's: the eager run below too
    eager = Trainer(train_cfg(lowdim_dataset, tmp_path / "eager", steps=4, compile="false", fused_activations=False))
    assert not broken.fused_activations
    assert broken.compiled
    for _ in range(4):
        assert broken.train_step() == eager.train_step()  # the failed first step left no trace
    assert not broken.compiled
    said = " ".join(capsys.readouterr().out.split())
    assert "compiling the network failed" in said and "no usable compiler" in said


@needs_compiler
def test_fused_activations_train_like_atens_mish_and_checkpoints_move(lowdim_dataset, tmp_path):
    """The compiled Mish kernels against ATen's over 12 float32 steps: losses within 1e-5 relative (float32 rounding
    of the one-exponential form, compounded over the steps); then resuming the fused run with them off."""
    stock = Trainer(train_cfg(lowdim_dataset, tmp_path / "stock", steps=12, fused_activations=False))
    fused = Trainer(train_cfg(lowdim_dataset, tmp_path / "fused", steps=12))
    assert stock.fused_activations == 0
    assert fused.fused_activations == sum(isinstance(m, Mish) for m in fused.policy.modules()) > 0
    assert not any(getattr(m, "fused", False) for m in fused.ema_policy.modules())  # the saved policy stays stock
    for _ in range(12):
        loss_stock, _ = stock.train_step()
        loss_fused, _ = fused.train_step()
        assert loss_fused == pytest.approx(loss_stock, rel=1e-5, abs=1e-7)
    for a, b in zip(stock.policy.parameters(), fused.policy.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    fused.fit()  # saves at step 12
    resumed = Trainer(train_cfg(lowdim_dataset, tmp_path / "fused", steps=14, resume=True, fused_activations=False))
    assert resumed.step == 12 and resumed.fused_activations == 0
    for a, b in zip(fused.policy.state_dict().values(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    resumed.fit()
    load_policy(tmp_path / "fused" / "policy")


def test_fused_activations_without_a_compiler_use_atens_mish_and_say_so(lowdim_dataset, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=2))
    assert trainer.fused_activations == 0
    assert not any(getattr(m, "fused", False) for m in trainer.policy.modules())
    said = " ".join(capsys.readouterr().out.split())
    assert "train.fused_activations: inductor needs a C++ compiler" in said and "ATen's kernel" in said
    trainer.fit()


def test_the_trainer_names_the_faster_precision_for_this_cpu(lowdim_dataset, tmp_path, monkeypatch, capsys):
    """A float32 U-Net run on a CPU with bf16 units hears of the switch; a bf16 run on a CPU without them is warned."""
    for has_units, precision, hint, warning in ((True, "fp32", True, False), (False, "fp32", False, False),
                                                (True, "bf16", False, False), (False, "bf16", False, True)):
        monkeypatch.setattr(speed, "cpu_has_bf16_units", lambda has_units=has_units: has_units)
        Trainer(train_cfg(lowdim_dataset, tmp_path / f"{has_units}{precision}", steps=1, precision=precision))
        out = " ".join(capsys.readouterr().out.split())
        assert ("train.precision=bf16 trained the PushT U-Net" in out) == hint, (has_units, precision, out)
        assert ("this CPU has no bf16 units" in out) == warning, (has_units, precision, out)


def test_compile_setting_is_checked():
    cpu = torch.device("cpu")
    assert not speed.resolve_compile("false", cpu, 10**6)
    assert not speed.resolve_compile("auto", cpu, speed.AUTO_COMPILE_MIN_STEPS - 1)  # too short to repay it
    assert speed.resolve_compile("auto", cpu, speed.AUTO_COMPILE_MIN_STEPS) == needs_compiler_present()
    with pytest.raises(ValueError, match="train.compile must be true, false or auto"):
        speed.resolve_compile("yes", cpu, 10)


def test_compile_mode_is_checked(lowdim_dataset, tmp_path):
    assert speed.check_compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="train.compile_mode must be one of default, reduce-overhead"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=1, compile="true", compile_mode="fast"))


def test_cuda_graph_modes_fall_back_to_default_under_torchrun(capsys):
    assert speed.compile_mode_for("reduce-overhead", distributed=False) == "reduce-overhead"
    assert speed.compile_mode_for("max-autotune-no-cudagraphs", distributed=True) == "max-autotune-no-cudagraphs"
    assert speed.compile_mode_for("reduce-overhead", distributed=True) == "default"
    said = " ".join(capsys.readouterr().out.split())
    assert "train.compile_mode=reduce-overhead: CUDA graphs under torchrun" in said and "mode 'default'" in said


@needs_compiler
@pytest.mark.parametrize("mode, marks_steps", [("reduce-overhead", True), ("default", False)])
def test_compile_mode_reaches_torch_compile_and_cuda_graph_runs_mark_each_step(lowdim_dataset, tmp_path,
                                                                              monkeypatch, mode, marks_steps):
    """``train.compile_mode`` is handed to torch.compile, and a CUDA-graph mode starts each training step with
    ``cudagraph_mark_step_begin`` (otherwise the replay of step n+1 may overwrite step n's outputs). torch.compile
    is replaced by a fake with its real signature that returns the function uncompiled, so nothing compiles."""
    fake_compile = create_autospec(torch.compile, side_effect=lambda fn, **kwargs: fn)
    mark_step = create_autospec(torch.compiler.cudagraph_mark_step_begin)
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", mark_step)
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=3, compile="true", compile_mode=mode))
    assert trainer.compiled
    fake_compile.assert_called_once()
    assert fake_compile.call_args.kwargs["mode"] == mode
    for _ in range(3):
        trainer.train_step()
    assert mark_step.call_count == (3 if marks_steps else 0)


def needs_compiler_present() -> bool:
    return speed.compile_unavailable_reason(torch.device("cpu")) is None
