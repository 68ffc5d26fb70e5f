"""bench/pusht_image_curve.py: the learning-curve fit that extrapolates image PushT to the anchor (fast, no training)."""

from __future__ import annotations

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


def test_the_figure_is_drawn_from_the_points_and_the_fit(curve, tmp_path):
    x = np.log10([1.28e5, 2.56e5, 5.12e5, 1.024e6])
    k = np.array([2.0, 8.0, 15.0, 25.0])
    points = [{"samples": 10 ** xi, "success_rate": ki / 100, "success_ci95": [max(ki / 100 - 0.08, 0), ki / 100 + 0.08],
               "n_episodes": 100} for xi, ki in zip(x, k)]
    a, b = curve.fit_logistic(x, k, np.full(4, 100.0))
    out = tmp_path / "curve.png"
    curve.plot(points, a, b, curve.samples_at(a, b, curve.ANCHOR), (5e6, 2e7), out)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
