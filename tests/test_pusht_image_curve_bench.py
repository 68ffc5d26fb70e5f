"""bench/pusht_image_curve.py: the learning-curve fit that extrapolates image PushT to the anchor (fast, no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from tests.helpers import bench_module


@pytest.fixture(scope="module")
def curve():
    yield from bench_module("pusht_image_curve")


def test_fit_recovers_a_known_curve_and_the_samples_where_it_reaches_the_anchor(curve):
    x = np.log10([1e5, 3e5, 1e6, 3e6])
    n = np.full(4, 100_000.0)
    k = np.round(expit(-12 + 2 * x) * n)
    a, b = curve.fit_logistic(x, k, n)
    assert a == pytest.approx(-12, abs=0.05) and b == pytest.approx(2, abs=0.01)
    expected = 10 ** ((np.log(curve.ANCHOR / (1 - curve.ANCHOR)) + 12) / 2)  # 1.92 M samples
    assert curve.samples_at(a, b, curve.ANCHOR) == pytest.approx(expected, rel=0.01)


def test_a_curve_that_does_not_rise_never_reaches_the_anchor(curve):
    x = np.log10([1e5, 3e5, 1e6])
    a, b = curve.fit_logistic(x, np.array([30.0, 20.0, 10.0]), np.full(3, 100.0))
    assert b < 0 and curve.samples_at(a, b, curve.ANCHOR) == float("inf")


def test_named_steps_pick_those_checkpoints_and_an_unsaved_step_is_refused(curve, tmp_path):
    found = [(step, tmp_path / f"step-{step}" / "policy") for step in (2000, 4000, 6000, 8000)]
    assert [step for step, _ in curve.chosen(found, [8000, 2000])] == [2000, 8000]
    assert curve.chosen(found, None) == found
    with pytest.raises(SystemExit, match=r"\[5000\].*no such checkpoint"):
        curve.chosen(found, [4000, 5000])


def test_the_fit_and_its_late_check_are_written_and_drawn(curve, tmp_path):
    rates = {2000: 0.02, 4000: 0.05, 8000: 0.25, 16000: 0.45, 24000: 0.55, 32000: 0.55}
    for step, rate in rates.items():
        (tmp_path / f"step{step:06d}.json").write_text(json.dumps({
            "step": step, "samples": step * 64, "n_action_steps": None, "fitted": True, "n_episodes": 100,
            "n_successes": round(rate * 100), "success_rate": rate, "success_ci95": [max(rate - 0.08, 0), rate + 0.08],
            "mean_max_coverage": 0.8}))
    (tmp_path / "step032000_ta12.json").write_text(json.dumps({
        "step": 32000, "samples": 32000 * 64, "n_action_steps": 12, "fitted": False, "n_episodes": 100,
        "n_successes": 60, "success_rate": 0.6, "success_ci95": [0.5, 0.7], "mean_max_coverage": 0.9}))
    figure = tmp_path / "curve.png"
    result = curve.cmd_fit(50, run=tmp_path, results=tmp_path, figure=figure, late_from_step=16000)
    everything, late = result["fits"]["all"], result["fits"]["late"]
    assert everything["steps"] == list(rates) and late["steps"] == [16000, 24000, 32000]
    assert everything["b_per_decade"] > late["b_per_decade"] > 0  # the curve bends over: the late slope is shallower
    assert late["samples_to_anchor"] > everything["samples_to_anchor"] > 32000 * 64
    assert [p["n_action_steps"] for p in result["side_points"]] == [12]  # the Ta point is shown, never fitted
    assert json.loads((tmp_path / "fit.json").read_text())["fits"]["late"]["steps"] == [16000, 24000, 32000]
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="need 3"):
        curve.cmd_fit(10, run=tmp_path, results=tmp_path, figure=None, late_from_step=24000)


def test_the_train_command_is_the_recipe_on_the_chosen_device_and_resumes_a_run(curve, tmp_path):
    fresh = curve.train_command(7, 4, tmp_path / "run", device="cuda", save_every=500)
    assert fresh[fresh.index("train") + 1:][:len(curve.RECIPE)] == curve.RECIPE
    assert {"device=cuda", "save_every=500", "time_budget_min=7", "num_threads=4", f"output_dir={tmp_path / 'run'}"} \
        <= set(fresh) and "resume=true" not in fresh
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    assert curve.train_command(7, 4, tmp_path / "run")[-1] == "resume=true"


def test_the_last_checkpoint_can_be_named_as_step_0(curve, tmp_path):
    found = [(step, tmp_path / f"step-{step}" / "policy") for step in (2000, 4000, 5123)]
    assert [step for step, _ in curve.chosen(found, [0, 2000])] == [2000, 5123]
