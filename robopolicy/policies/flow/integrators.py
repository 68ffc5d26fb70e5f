"""Fixed-step ODE integrators for any velocity field ``v(x, t)``, as plain functions.

Flow policies (``flow``, ``sfp``) and exported runtimes share these, so they take no network and
hold no state: ``v`` is any callable mapping a state tensor and a float time to a velocity of the
same shape. Each method's cost is its number of velocity evaluations (NFE) per step:

=========  =====  ===============================================================
method     NFE    note
=========  =====  ===============================================================
euler      N      first order
midpoint   2N     second order (explicit midpoint)
heun       2N     second order; every step evaluates both ends, nothing is reused
rk4        4N     classic fourth-order Runge-Kutta
=========  =====  ===============================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor

VelocityField = Callable[[Tensor, float], Tensor]
StepCallback = Callable[[int, float, Tensor], None]


def euler_step(v: VelocityField, x: Tensor, t: float, h: float) -> Tensor:
    return x + h * v(x, t)


def midpoint_step(v: VelocityField, x: Tensor, t: float, h: float) -> Tensor:
    k1 = v(x, t)
    return x + h * v(x + 0.5 * h * k1, t + 0.5 * h)


def heun_step(v: VelocityField, x: Tensor, t: float, h: float) -> Tensor:
    k1 = v(x, t)
    k2 = v(x + h * k1, t + h)
    return x + 0.5 * h * (k1 + k2)


def rk4_step(v: VelocityField, x: Tensor, t: float, h: float) -> Tensor:
    k1 = v(x, t)
    k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = v(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)


STEPPERS: dict[str, Callable[[VelocityField, Tensor, float, float], Tensor]] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "heun": heun_step,
    "rk4": rk4_step,
}
# Velocity evaluations per step.
STAGES: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
METHODS: tuple[str, ...] = tuple(STEPPERS)


def check_method(method: str) -> None:
    if method not in STEPPERS:
        raise ValueError(f"unknown integrator {method!r}; choose one of {METHODS}")


def nfe(method: str, steps: int) -> int:
    """Velocity evaluations for ``steps`` steps of ``method``."""
    check_method(method)
    return STAGES[method] * steps


def trajectory(v: VelocityField, x: Tensor, method: str = "euler", steps: int = 10, t0: float = 0.0,
               t1: float = 1.0) -> Iterator[tuple[float, Tensor]]:
    """Yield ``(t, x(t))`` after every step, so callers can act on partial results (streaming)."""
    check_method(method)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step = STEPPERS[method]
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * (t1 - t0) / steps  # no accumulated rounding: step i starts exactly at t0 + i h
        x = step(v, x, t, h)
        yield t0 + (i + 1) * (t1 - t0) / steps, x


def integrate(v: VelocityField, x: Tensor, method: str = "euler", steps: int = 10, t0: float = 0.0,
              t1: float = 1.0, callback: StepCallback | None = None) -> Tensor:
    """x(t1) from x(t0) with ``steps`` fixed steps; ``callback(i, t, x)`` runs after step i."""
    out = x
    for i, (t, out) in enumerate(trajectory(v, x, method, steps, t0, t1)):
        if callback is not None:
            callback(i, t, out)
    return out


__all__ = ["METHODS", "STAGES", "STEPPERS", "VelocityField", "check_method", "euler_step", "heun_step",
           "integrate", "midpoint_step", "nfe", "rk4_step", "trajectory"]
