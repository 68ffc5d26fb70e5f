"""C code generation for the Streaming Flow Policy (SFP) and flow-matching (mlp backbone) families: the FiLM
velocity net, the fixed-step Euler flows, the seeded Gaussian noise the C code draws (and :func:`c_gaussian`
reproduces), and the torch references of their self-test vectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from robopolicy.export.c_codegen import (
    _dequantized,
    _film_linears,
    _fmt,
    _linear_args,
    _linear_c,
    _linear_numpy,
    _norm_params,
    _split_history,
    _weight_bytes,
    _weights_c,
)
from robopolicy.export.c_sources import CExportError

# ---- Streaming Flow Policy ----------------------------------------------------------------------
SEED_MULT, SEED_INC = 1664525, 1013904223  # policy_step's seed advances as a 32-bit LCG


def c_gaussian(seed: int, n: int) -> np.ndarray:
    """The n standard normals the generated C draws from ``seed`` (xorshift32, Box-Muller), float32.

    The seed is first mixed (murmur3's finalizer) so that nearby seeds give unrelated streams.
    """
    with np.errstate(over="ignore"):
        s = np.uint32(seed & 0xFFFFFFFF)
        s ^= s >> np.uint32(16)
        s *= np.uint32(0x85EBCA6B)
        s ^= s >> np.uint32(13)
        s *= np.uint32(0xC2B2AE35)
        s ^= s >> np.uint32(16)
    s = s if s else np.uint32(0x6D2B79F5)
    f32 = np.float32

    def uniform() -> np.float32:
        nonlocal s
        s ^= np.uint32(s << np.uint32(13))
        s ^= np.uint32(s >> np.uint32(17))
        s ^= np.uint32(s << np.uint32(5))
        return (f32(s >> np.uint32(8)) + f32(0.5)) * f32(1.0 / 16777216.0)

    out = np.empty(n, dtype=np.float32)
    with np.errstate(over="ignore"):
        for i in range(0, n, 2):
            u1, u2 = uniform(), uniform()
            r, angle = np.sqrt(f32(-2.0) * np.log(u1)), f32(6.2831853071795864) * u2
            out[i] = r * np.cos(angle)
            if i + 1 < n:
                out[i + 1] = r * np.sin(angle)
    return out


def _sfp_checks(policy: nn.Module) -> None:
    cfg = policy.config
    if cfg.integrator != "euler":
        raise CExportError(f"C export of sfp: only the euler integrator is supported, got {cfg.integrator!r} "
                           "(set policy.set_sampler('euler', steps) before exporting)")


def _film_time_table(net: nn.Module, times: list[float]) -> np.ndarray:
    """(S, hidden): the velocity net's time branch at the S fixed Euler times (it does not depend on obs)."""
    with torch.no_grad():
        return np.stack([net.time(torch.full((1,), t) * net.timestep_scale)[0].double().cpu().numpy() for t in times])


def _film_velocity_c(net: nn.Module, state_dim: int, times: list[float], int8: bool) -> tuple[str, list]:
    """Weights and C functions of a FiLM velocity MLP (``robopolicy.policies.networks.film_mlp``).

    Defines ``embed_obs(obs)`` (normalizes and embeds into ``emb``), ``velocity(step, x, v)`` at the
    step-th of the fixed ``times``, the state buffers ``x`` and ``v`` (``STATE_DIM``), and
    ``gaussian(seed, out)`` (``STATE_DIM`` normals, as :func:`c_gaussian`). Returns (source, linears).
    """
    hidden = net.inp.out_features
    linears = {name: _linear_numpy(m) for name, m in _film_linears(net).items()}
    ln = net.out[0]
    parts = [_weights_c(name, w, b, int8) for name, (w, b) in linears.items()]
    parts.append(f"static const float TIME_COND[{len(times) * hidden}] = {_fmt(_film_time_table(net, times))};")
    parts.append(f"static const float LN_W[{hidden}] = {_fmt(ln.weight.detach().double().cpu().numpy())};")
    parts.append(f"static const float LN_B[{hidden}] = {_fmt(ln.bias.detach().double().cpu().numpy())};")
    blocks = "\n".join(f"""    linear({_linear_args(f'film{k}', int8)}, cond, film, {2 * hidden}, {hidden});
    block(h, film, {_linear_args(f'fc1_{k}', int8)}, {_linear_args(f'fc2_{k}', int8)});"""
                       for k in range(len(net.blocks)))
    wtype = "int8_t" if int8 else "float"
    wargs = (lambda n: f"const {wtype} *w{n}, const float *s{n}, const float *b{n}") if int8 else \
        (lambda n: f"const {wtype} *w{n}, const float *b{n}")
    call = (lambda n: f"w{n}, s{n}, b{n}") if int8 else (lambda n: f"w{n}, b{n}")
    parts.append(f"""
#define HIDDEN {hidden}
#define STATE_DIM {state_dim}
#define EULER_STEPS {len(times)}

static float obs_n[POLICY_OBS_DIM], emb[HIDDEN], cond[HIDDEN], film[2 * HIDDEN];
static float h[HIDDEN], y[HIDDEN], u[HIDDEN], x[STATE_DIM], v[STATE_DIM];

{_linear_c()}
/* torch's mish, x tanh(softplus(x)), with one expf: tanh(log(1 + e)) = n / (n + 2), n = e (e + 2), e = exp(x) */
static float mish1(float a)
{{
    float e, n;
    if (a > 20.0f) return a;
    e = expf(a);
    n = e * (e + 2.0f);
    return a * n / (n + 2.0f);
}}
static void mish(float *a, int n) {{ int i; for (i = 0; i < n; ++i) a[i] = mish1(a[i]); }}

/* LayerNorm over n values (eps 1e-5); w, b = 0 for no affine */
static void layer_norm(const float *in, float *out, int n, const float *w, const float *b)
{{
    int i;
    float mean = 0.0f, var = 0.0f, inv;
    for (i = 0; i < n; ++i) mean += in[i];
    mean /= (float)n;
    for (i = 0; i < n; ++i) var += (in[i] - mean) * (in[i] - mean);
    inv = 1.0f / sqrtf(var / (float)n + 1e-5f);
    for (i = 0; i < n; ++i) out[i] = (in[i] - mean) * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}}

/* FiLM residual block: h += fc2(mish(fc1(mish(LN(h) * (1 + scale) + shift)))) */
static void block(float *hh, const float *fm, {wargs('1')}, {wargs('2')})
{{
    int i;
    layer_norm(hh, y, HIDDEN, 0, 0);
    for (i = 0; i < HIDDEN; ++i) y[i] = y[i] * (1.0f + fm[i]) + fm[HIDDEN + i];
    mish(y, HIDDEN);
    linear({call('1')}, y, u, HIDDEN, HIDDEN);
    mish(u, HIDDEN);
    linear({call('2')}, u, y, HIDDEN, HIDDEN);
    for (i = 0; i < HIDDEN; ++i) hh[i] += y[i];
}}

/* emb = the observation embedding of the raw history obs (normalized first) */
static void embed_obs(const float *obs)
{{
    int i;
    for (i = 0; i < POLICY_OBS_DIM; ++i) obs_n[i] = (obs[i] - IN_CENTER[i]) / IN_SCALE[i];
    linear({_linear_args('obs1', int8)}, obs_n, u, HIDDEN, POLICY_OBS_DIM);
    mish(u, HIDDEN);
    linear({_linear_args('obs2', int8)}, u, emb, HIDDEN, HIDDEN);
}}

/* v(x, t_step | emb) */
static void velocity(int step, const float *xs, float *vs)
{{
    int i;
    for (i = 0; i < HIDDEN; ++i) cond[i] = mish1(emb[i] + TIME_COND[step * HIDDEN + i]);
    linear({_linear_args('inp', int8)}, xs, h, HIDDEN, STATE_DIM);
{blocks}
    layer_norm(h, y, HIDDEN, LN_W, LN_B);
    mish(y, HIDDEN);
    linear({_linear_args('out', int8)}, y, vs, STATE_DIM, HIDDEN);
}}

static uint32_t xorshift32(uint32_t *s) {{ *s ^= *s << 13; *s ^= *s >> 17; *s ^= *s << 5; return *s; }}
static float uniform01(uint32_t *s) {{ return ((float)(xorshift32(s) >> 8) + 0.5f) * (1.0f / 16777216.0f); }}

/* STATE_DIM standard normals from seed (Box-Muller), the order c_gaussian() reproduces */
static void gaussian(uint32_t seed, float *out)
{{
    uint32_t s = seed;
    int i;
    s ^= s >> 16; s *= 0x85EBCA6Bu; s ^= s >> 13; s *= 0xC2B2AE35u; s ^= s >> 16;  /* murmur3 fmix32 */
    if (!s) s = 0x6D2B79F5u;
    for (i = 0; i < STATE_DIM; i += 2) {{
        const float u1 = uniform01(&s), u2 = uniform01(&s);
        const float r = sqrtf(-2.0f * logf(u1)), angle = 6.2831853071795864f * u2;
        out[i] = r * cosf(angle);
        if (i + 1 < STATE_DIM) out[i + 1] = r * sinf(angle);
    }}
}}
""")
    return "\n".join(parts), list(linears.values())


def _film_meta(linears: list, hidden: int, n_times: int, int8: bool) -> dict[str, Any]:
    return {"n_params": int(sum(w.size + b.size for w, b in linears) + 2 * hidden),
            "weight_bytes": _weight_bytes(linears, int8) + 4 * (n_times * hidden + 2 * hidden)}


def _sfp_source(policy: nn.Module, int8: bool) -> tuple[str, dict[str, Any]]:
    """policy.c body for an SFP: obs embedding, velocity net, Euler flow from the start action."""
    _sfp_checks(policy)
    cfg = policy.config
    steps, K = cfg.integration_steps_per_action, cfg.n_knots
    t1 = 1.0 / (K - 1)
    times = [0.0 + i * t1 / steps for i in range(steps)]  # exactly the times flow.integrators.trajectory uses
    start_offset = -1
    if cfg.start_from_observation_key is not None:
        start_offset, o = 0, 0
        for f in cfg.input_features:
            if f.key == cfg.start_from_observation_key:
                start_offset = o
            o += int(np.prod(f.shape))
    net_c, linears = _film_velocity_c(policy.net, policy.state_dim, times, int8)
    body = net_c + f"""
#define STOCHASTIC {1 if policy.stochastic else 0}
#define START_OFFSET {start_offset}   /* start action's offset in an observation step, -1 = none */
static const float SIGMA0 = {float(np.float32(cfg.sigma0))!r}f;
static const float H_STEP = {float(np.float32(t1 / steps))!r}f;
static float last_action[POLICY_ACTION_DIM];
static int has_last_action = 0;
static uint32_t step_seed = 1u;

int policy_sfp_step(const float *obs, const float *start, uint32_t seed, float *action)
{{
    int i, k;
    if (!all_finite(obs, POLICY_OBS_DIM) || (start && !all_finite(start, POLICY_ACTION_DIM))) return -1;
    embed_obs(obs);
    gaussian(seed, v);
    for (i = 0; i < POLICY_ACTION_DIM; ++i) {{
        float a0 = 0.0f;
        if (start) a0 = (start[i] - ACT_CENTER[i]) / ACT_SCALE[i];
        else if (START_OFFSET >= 0)
            a0 = (obs[(POLICY_N_OBS_STEPS - 1) * POLICY_STEP_DIM + START_OFFSET + i] - ACT_CENTER[i]) / ACT_SCALE[i];
        x[i] = a0 + SIGMA0 * v[i];
    }}
    for (i = POLICY_ACTION_DIM; i < STATE_DIM; ++i) x[i] = v[i];  /* SFP-S: the latent z0 */
    for (k = 0; k < EULER_STEPS; ++k) {{
        velocity(k, x, v);
        for (i = 0; i < STATE_DIM; ++i) x[i] += H_STEP * v[i];
    }}
    for (i = 0; i < POLICY_ACTION_DIM; ++i) action[i] = x[i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(action, POLICY_ACTION_DIM) ? 0 : -1;
}}

int policy_step(const float *obs, float *action)
{{
    int i, ok = policy_sfp_step(obs, has_last_action ? last_action : 0, step_seed, action);
    step_seed = step_seed * {SEED_MULT}u + {SEED_INC}u;
    has_last_action = ok == 0;
    if (ok == 0)
        for (i = 0; i < POLICY_ACTION_DIM; ++i) last_action[i] = action[i];
    return ok;
}}

void policy_reset(void) {{ has_last_action = 0; }}
void policy_set_seed(uint32_t seed) {{ step_seed = seed; }}
"""
    meta = {**_film_meta(linears, cfg.hidden_dim, steps, int8), "variant": cfg.variant,
            "euler_steps_per_action": steps, "sigma0": cfg.sigma0,
            "start_from_observation_key": cfg.start_from_observation_key}
    return body, meta


# ---- Flow matching (mlp backbone) ---------------------------------------------------------------
def _flow_checks(policy: nn.Module) -> None:
    cfg = policy.config
    if cfg.backbone != "mlp":
        raise CExportError(f"C export of flow: only the 'mlp' backbone is supported, got {cfg.backbone!r} "
                           "(train with policy.backbone=mlp)")
    if cfg.integrator != "euler" or cfg.adaptive:
        raise CExportError(f"C export of flow: only fixed-step euler is supported, got {cfg.integrator!r}"
                           f"{' (adaptive)' if cfg.adaptive else ''} (set policy.set_sampler('euler', steps) and "
                           "adaptive=False before exporting)")


def _flow_source(policy: nn.Module, int8: bool) -> tuple[str, dict[str, Any]]:
    """policy.c body for a flow policy: the whole chunk from seeded Gaussian noise by fixed Euler steps."""
    _flow_checks(policy)
    cfg = policy.config
    steps = cfg.num_inference_steps
    times = [0.0 + i * 1.0 / steps for i in range(steps)]  # exactly the times flow.integrators.trajectory uses
    net_c, linears = _film_velocity_c(policy.net, cfg.horizon * cfg.action_dim, times, int8)
    clip = float(np.float32(cfg.clip_sample_range)) if cfg.clip_sample else 0.0
    body = net_c + f"""
#define CLIP_SAMPLE {1 if cfg.clip_sample else 0}
#define CLIP_RANGE {clip!r}f
static const float H_STEP = {float(np.float32(1.0 / steps))!r}f;
static uint32_t step_seed = 1u;

/* x = the normalized chunk: Euler steps from the seed's Gaussian noise; 0, or -1 if obs is not finite */
static int flow(const float *obs, uint32_t seed)
{{
    int i, k;
    if (!all_finite(obs, POLICY_OBS_DIM)) return -1;
    embed_obs(obs);
    gaussian(seed, x);
    for (k = 0; k < EULER_STEPS; ++k) {{
        velocity(k, x, v);
        for (i = 0; i < STATE_DIM; ++i) x[i] += H_STEP * v[i];
    }}
#if CLIP_SAMPLE
    for (i = 0; i < STATE_DIM; ++i) x[i] = x[i] < -CLIP_RANGE ? -CLIP_RANGE : (x[i] > CLIP_RANGE ? CLIP_RANGE : x[i]);
#endif
    return 0;
}}

int policy_flow_chunk(const float *obs, uint32_t seed, float *chunk)
{{
    int i, k;
    if (flow(obs, seed) != 0) return -1;
    for (k = 0; k < POLICY_HORIZON; ++k)
        for (i = 0; i < POLICY_ACTION_DIM; ++i)
            chunk[k * POLICY_ACTION_DIM + i] = x[k * POLICY_ACTION_DIM + i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(chunk, POLICY_HORIZON * POLICY_ACTION_DIM) ? 0 : -1;
}}

int policy_flow_step(const float *obs, uint32_t seed, float *action)
{{
    int i;
    const float *z = x + (POLICY_N_OBS_STEPS - 1) * POLICY_ACTION_DIM;
    if (flow(obs, seed) != 0) return -1;
    for (i = 0; i < POLICY_ACTION_DIM; ++i) action[i] = z[i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(action, POLICY_ACTION_DIM) ? 0 : -1;
}}

int policy_chunk(const float *obs, float *chunk)
{{
    int ok = policy_flow_chunk(obs, step_seed, chunk);
    step_seed = step_seed * {SEED_MULT}u + {SEED_INC}u;
    return ok;
}}

int policy_step(const float *obs, float *action)
{{
    int ok = policy_flow_step(obs, step_seed, action);
    step_seed = step_seed * {SEED_MULT}u + {SEED_INC}u;
    return ok;
}}

void policy_reset(void) {{ }}
void policy_set_seed(uint32_t seed) {{ step_seed = seed; }}
"""
    meta = {**_film_meta(linears, cfg.mlp_hidden_dim, steps, int8), "euler_steps": steps,
            "clip_sample": cfg.clip_sample}
    return body, meta


def reference_flow_actions(policy: nn.Module, obs: np.ndarray, seeds: list[int], int8: bool = False) -> np.ndarray:
    """What ``policy_flow_step(obs, seed)`` must return, from torch: (N, A), robot units."""
    cfg = policy.config
    hist = _split_history(policy, obs)
    normalized = {key: policy.normalizer.normalize(key, x) for key, x in hist.items()}
    noise = torch.as_tensor(np.stack([c_gaussian(s, cfg.horizon * cfg.action_dim) for s in seeds]))
    with _dequantized(policy, int8), torch.no_grad():
        chunk = policy.generate_actions(normalized, noise=noise.view(len(seeds), cfg.horizon, cfg.action_dim))
    first = chunk[:, cfg.n_obs_steps - 1]
    return policy.normalizer.unnormalize(policy.action_key, first).double().numpy()


def sample_starts(policy: nn.Module, n: int, seed: int = 1) -> np.ndarray:
    """Random start actions (N, A) over the action range (robot units)."""
    c, s = _norm_params(policy, policy.action_key, policy.config.action_dim)
    return (c + s * np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, c.size))).astype(np.float32)


def reference_sfp_actions(policy: nn.Module, obs: np.ndarray, starts: np.ndarray | None, seeds: list[int],
                          int8: bool = False) -> np.ndarray:
    """What ``policy_sfp_step(obs, start, seed)`` must return, from torch: (N, A), robot units.

    ``starts`` None = every flow starts from the observation (the C code's start = NULL).
    """
    cfg = policy.config
    hist = _split_history(policy, obs)
    normalized = {key: policy.normalizer.normalize(key, x) for key, x in hist.items()}
    noise = torch.as_tensor(np.stack([c_gaussian(s, policy.state_dim) for s in seeds]))
    start = None if starts is None else policy.normalizer.normalize(
        policy.action_key, torch.as_tensor(starts, dtype=torch.float32))
    saved_last, policy.last_action = policy.last_action, None
    try:
        with _dequantized(policy, int8), torch.no_grad():
            first = next(policy._stream(normalized, noise=noise, start=start, n_actions=1))
    finally:
        policy.last_action = saved_last
    return policy.normalizer.unnormalize(policy.action_key, first).reshape(len(obs), cfg.action_dim).double().numpy()
