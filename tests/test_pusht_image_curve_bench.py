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
