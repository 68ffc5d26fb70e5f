"""Training stops on a non-finite loss, and evaluation runs on its own schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robopolicy.train.trainer import NonFiniteLossError, Trainer
from tests.test_policy import train_cfg


def test_eval_every_runs_on_its_own_schedule(lowdim_dataset: Path, tmp_path: Path, monkeypatch):
    """eval_every=2 with log_every=3 evaluates at steps 2, 4, 6 (the old loop only at lcm = 6)."""
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=6, log_every=3, save_every=0, eval_every=2))
    evaluated = []

    def fake_evaluate():
        evaluated.append(trainer.step)
        return {"success_rate": 0.5, "mean_max_coverage": 0.25}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    run_dir = trainer.fit()
    assert evaluated == [2, 4, 6]
    rows = (run_dir / "train_log.csv").read_text().splitlines()[1:]
    steps_with_eval = [int(r.split(",")[0]) for r in rows if r.split(",")[-2]]
    assert steps_with_eval == [2, 4, 6]


def test_non_finite_loss_stops_training_without_saving(lowdim_dataset: Path, tmp_path: Path, monkeypatch):
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=20, save_every=0))
    real = trainer.policy.compute_loss
    calls = []

    def loss_goes_nan(batch, generator=None):
        calls.append(1)
        loss = real(batch, generator=generator)
        return loss * float("nan") if len(calls) >= 4 else loss

    monkeypatch.setattr(trainer.policy, "compute_loss", loss_goes_nan)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="step 4: the training loss is nan"):
        trainer.fit()
    assert trainer.step == 3  # the bad step never updated anything
    assert not (tmp_path / "run" / "policy").exists()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    after = trainer.policy.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # three finite steps did train


def test_training_refuses_a_dataset_with_nan_statistics(lowdim_dataset: Path, tmp_path: Path):
    """The fuzzer's case: NaN in stats.json used to train with loss=nan every step, exit 0 and save a policy."""
    import json

    from robopolicy.data.format import DatasetError

    path = lowdim_dataset / "meta/stats.json"
    stats = json.loads(path.read_text())
    stats["action"]["std"] = [float("nan"), 1.0]
    path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"stats\.json: field 'action\.std' is not finite"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=5))
    assert not (tmp_path / "run" / "policy").exists()


def test_resume_refuses_a_corrupt_training_state(lowdim_dataset: Path, tmp_path: Path):
    from robopolicy.train.checkpoint import STATE_TENSORS, latest_checkpoint

    run = tmp_path / "run"
    Trainer(train_cfg(lowdim_dataset, run, steps=4, save_every=2)).fit()
    state = latest_checkpoint(run / "checkpoints") / STATE_TENSORS
    data = bytearray(state.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor: safetensors would load it silently
    state.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"training_state\.safetensors: size or sha256 differs"):
        Trainer(train_cfg(lowdim_dataset, run, steps=6, resume=True))


def test_a_wall_clock_cap_that_cuts_training_short_is_reported_first(lowdim_dataset: Path, tmp_path: Path, monkeypatch):
    """The summary tells steps done from steps planned, and the demo's report leads with what that means."""
    import json

    from robopolicy.cli import demo_cut_short_warning, demo_next_steps

    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=50, save_every=0, time_budget_min=1.0))
    clock = iter(range(0, 10_000, 7))  # 7 s per step: the 60 s cap stops it after a few of the 50 steps
    monkeypatch.setattr(trainer, "elapsed", lambda: float(next(clock)))
    summary = json.loads((trainer.fit() / "train_summary.json").read_text())
    assert summary["stopped_by"] == "time_budget" and summary["steps_planned"] == 50
    assert 0 < summary["steps"] < 50
    warning = demo_cut_short_warning(summary)
    assert f"{summary['steps']} of 50 planned steps" in warning and "under-trained" in warning
    assert f"resume=true output_dir={tmp_path / 'run'}" in warning

    finished = Trainer(train_cfg(lowdim_dataset, tmp_path / "run2", steps=3, save_every=0))
    summary = json.loads((finished.fit() / "train_summary.json").read_text())
    assert summary == {**summary, "steps": 3, "steps_planned": 3, "stopped_by": "steps"}
    assert demo_cut_short_warning(summary) is None
    steps = demo_next_steps({"artifacts": {"policy": "run/policy", "onnx": "out/onnx"}})
    assert any("robopolicy eval checkpoint=run/policy" in s for s in steps)
    assert any("robopolicy serve checkpoint=out/onnx" in s for s in steps)
