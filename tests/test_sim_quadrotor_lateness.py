"""The simulated Crazyflie's lateness statistics: bounded memory and work per tick, exact over their window."""

from __future__ import annotations

import numpy as np

from robopolicy.robots.sim_quadrotor import LatenessWindow


def test_lateness_window_is_bounded_and_exact_over_its_window():
    window = LatenessWindow(size=100)
    rng = np.random.default_rng(0)
    late = rng.exponential(50e-6, size=100_000)  # a 200 s episode at 500 Hz
    late[10] = 0.02  # one early hiccup: it leaves the percentiles' window but stays the maximum
    for x in late:
        window.add(float(x))
    assert len(window) == 100
    summary = window.summary_us()
    np.testing.assert_allclose(summary["late_p50_us"], np.percentile(late[-100:], 50) * 1e6)
    np.testing.assert_allclose(summary["late_p99_us"], np.percentile(late[-100:], 99) * 1e6)
    assert summary["late_max_us"] == 0.02 * 1e6
    window.clear()
    assert len(window) == 0
    window.add(1e-6)
    assert window.summary_us() == {"late_p50_us": 1.0, "late_p99_us": 1.0, "late_max_us": 1.0}
