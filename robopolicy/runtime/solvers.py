"""Host-side samplers in numpy: DDIM / DDPM updates from the manifest tables, fixed-step ODE integrators.

They mirror ``diffusers`` (DDIM with eta = 0, DDPM "fixed_small") and
``robopolicy.policies.flow.integrators`` step for step, in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Velocity = Callable[[np.ndarray, float], np.ndarray]
F32 = np.float32


# ---- diffusion -----------------------------------------------------------------------------------
def leading_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """diffusers' default ("leading") spacing, as DDIM/DDPM ``set_timesteps`` computes it."""
    ratio = num_train_timesteps // num_inference_steps
    return [int(t) for t in (np.arange(0, num_inference_steps) * ratio).round()[::-1]]


def diffusion_tables(kind: str, alphas_cumprod: np.ndarray, num_train_timesteps: int,
                     num_inference_steps: int) -> dict[str, list]:
    """Per-step timestep t, alpha_bar(t) and alpha_bar(previous t) for the DDIM or DDPM update."""
    ts = leading_timesteps(num_train_timesteps, num_inference_steps)
    ac = np.asarray(alphas_cumprod, dtype=np.float32)
    if kind == "DDIM":
        prev = [t - num_train_timesteps // num_inference_steps for t in ts]
    elif kind == "DDPM":
        prev = [*ts[1:], -1]
    else:
        raise ValueError(f"no host-side tables for scheduler {kind!r} (supported: DDIM, DDPM)")
    return {"timesteps": ts, "prev_timesteps": prev, "alpha_t": [float(ac[t]) for t in ts],
            "alpha_prev": [float(ac[p]) if p >= 0 else 1.0 for p in prev]}


def _x0_eps(out: np.ndarray, x: np.ndarray, a_t: np.float32, prediction_type: str, clip: float | None):
    """Predicted clean sample (clipped) and noise. As diffusers (``use_clipped_model_output=False``), the noise
    comes from the unclipped prediction."""
    beta_t = F32(1) - a_t
    if prediction_type == "epsilon":
        x0 = (x - beta_t ** F32(0.5) * out) / a_t ** F32(0.5)
        eps = out
    else:
        x0 = out
        eps = (x - a_t ** F32(0.5) * x0) / beta_t ** F32(0.5)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    return x0.astype(F32, copy=False), eps


def ddim_step(out: np.ndarray, x: np.ndarray, a_t: float, a_prev: float, prediction_type: str,
              clip: float | None) -> np.ndarray:
    a_t, a_prev = F32(a_t), F32(a_prev)
    x0, eps = _x0_eps(out, x, a_t, prediction_type, clip)
    return (a_prev ** F32(0.5) * x0 + (F32(1) - a_prev) ** F32(0.5) * eps).astype(F32, copy=False)


def ddpm_step(out: np.ndarray, x: np.ndarray, t: int, a_t: float, a_prev: float, prediction_type: str,
              clip: float | None, rng: np.random.Generator) -> np.ndarray:
    a_t, a_prev = F32(a_t), F32(a_prev)
    beta_t, beta_prev = F32(1) - a_t, F32(1) - a_prev
    cur_alpha = a_t / a_prev
    cur_beta = F32(1) - cur_alpha
    x0, _ = _x0_eps(out, x, a_t, prediction_type, clip)
    mean = (a_prev ** F32(0.5) * cur_beta) / beta_t * x0 + cur_alpha ** F32(0.5) * beta_prev / beta_t * x
    if t > 0:
        variance = max(float(beta_prev / beta_t * cur_beta), 1e-20)
        mean = mean + F32(variance ** 0.5) * rng.standard_normal(x.shape, dtype=F32)
    return mean.astype(F32, copy=False)


# ---- flow integrators -----------------------------------------------------------------------------
def euler_step(v: Velocity, x: np.ndarray, t: float, h: float) -> np.ndarray:
    return x + h * v(x, t)


def midpoint_step(v: Velocity, x: np.ndarray, t: float, h: float) -> np.ndarray:
    k1 = v(x, t)
    return x + h * v(x + 0.5 * h * k1, t + 0.5 * h)


def heun_step(v: Velocity, x: np.ndarray, t: float, h: float) -> np.ndarray:
    k1 = v(x, t)
    k2 = v(x + h * k1, t + h)
    return x + 0.5 * h * (k1 + k2)


def rk4_step(v: Velocity, x: np.ndarray, t: float, h: float) -> np.ndarray:
    k1 = v(x, t)
    k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = v(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)


STEPPERS = {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step, "rk4": rk4_step}
STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def trajectory(v: Velocity, x: np.ndarray, method: str, steps: int, t0: float = 0.0,
               t1: float = 1.0) -> Iterator[tuple[float, np.ndarray]]:
    if method not in STEPPERS:
        raise ValueError(f"unknown integrator {method!r}; choose one of {tuple(STEPPERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step = STEPPERS[method]
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * (t1 - t0) / steps
        x = step(v, x, t, h).astype(F32, copy=False)
        yield t0 + (i + 1) * (t1 - t0) / steps, x


def integrate(v: Velocity, x: np.ndarray, method: str, steps: int, t0: float = 0.0, t1: float = 1.0) -> np.ndarray:
    for _t, x_t in trajectory(v, x, method, steps, t0, t1):
        x = x_t
    return x
