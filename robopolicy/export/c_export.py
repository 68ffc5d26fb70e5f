"""Export a low-dim MLP, Streaming Flow or flow-matching policy as dependency-free C99 for microcontrollers (the Crazyflie route).

Layout: this module generates the code (weights, network-specific forward passes, self-test vectors);
the fixed C lives in real files under ``c_templates/`` (package data, see :mod:`robopolicy.export.c_sources`),
the QEMU boards and the STM32F405 linker script in :mod:`robopolicy.export.c_boards`, and building/running
in :mod:`robopolicy.export.c_build`. Their public names are re-exported here.

``export_c(policy, out_dir)`` writes

* ``policy.h``           -- the API and the dimensions (``POLICY_OBS_DIM``, ``POLICY_ACTION_DIM``, ...)
* ``policy.c``           -- weights as ``const`` arrays (they live in flash), static buffers, no malloc,
                            normalization of the observation and un-normalization of the action
* ``policy_selftest.c``  -- self-test vectors generated with torch and ``int policy_selftest(void)``
* ``main_selftest.c``    -- ``main`` that returns the self-test verdict (host, or QEMU via semihosting)
* ``main_eval.c``        -- host helper: reads observations (whitespace-separated floats) on stdin,
                            prints one action per line (``%.9g``); used by the tests
* ``export.json``        -- what was exported (dims, feature layout, quantization, tolerances)

C API (all in robot units, the dataset's units)::

    int policy_step(const float *obs, float *action);   // obs: POLICY_OBS_DIM, action: POLICY_ACTION_DIM
    int policy_chunk(const float *obs, float *chunk);   // chunk: POLICY_HORIZON * POLICY_ACTION_DIM
    int policy_selftest(void);                          // 0 = every vector matches

``obs`` is the *raw* observation history flattened oldest-first, each step the concatenation of the
input features in ``config.input_features`` order: ``obs[t * STEP_DIM + j]`` with ``t = 0`` the
oldest of the ``n_obs_steps`` observations (the same layout as the policy's encoder). The C code
normalizes it with the checkpoint's statistics and un-normalizes the output. ``policy_step`` writes the
action aligned with the latest observation (chunk index ``n_obs_steps - 1``, what the Python
``select_action`` executes first); action queueing (Ta) is left to the caller, who may simply call
``policy_step`` every control period (receding horizon). Return value: 0, or -1 if an input or output
is not finite (the caller should then fall back to a safe command).

``int8=True`` stores every Linear weight matrix as int8 with one float scale per output row
(symmetric, ``scale = max|row| / 127``); activations and biases stay float. Flash drops ~4x.

Supported: ``mlp`` policies with only vector (low-dim) inputs, ``layer_norm=False``, activations
relu/tanh/elu; ``sfp`` policies (both variants) with vector inputs and the Euler integrator; and ``flow``
policies with the ``mlp`` backbone, vector inputs and fixed Euler steps.

SFP extras (see ``_sfp_source``): the flow needs a start action and Gaussian noise, so the C code has

    int policy_sfp_step(const float *obs, const float *start, uint32_t seed, float *action);
    void policy_reset(void);              // forget the last action: the next flow starts at the observation
    void policy_set_seed(uint32_t seed);  // seed of the noise stream policy_step uses

``policy_sfp_step`` integrates ``integration_steps_per_action`` fixed Euler steps from ``start`` (robot
units; NULL = from ``start_from_observation_key`` or the action center) plus ``sigma0`` times noise drawn
from ``seed`` by a xorshift32 + Box-Muller generator that :func:`c_gaussian` reproduces in Python.
``policy_step`` chains it: the last action it returned is the next start, and the seed advances each call.
The time conditioning at the fixed Euler times does not depend on the observation, so it is computed
once at export and stored as a table (the time MLP itself is not in the C code).

Flow extras (see ``_flow_source``): the whole chunk is integrated from Gaussian noise drawn from a seed
by the same generator, so

    int policy_flow_chunk(const float *obs, uint32_t seed, float *chunk);
    int policy_flow_step(const float *obs, uint32_t seed, float *action);  // the chunk's action for now
    void policy_set_seed(uint32_t seed);  // seed of the stream policy_step / policy_chunk use
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robopolicy.export.c_boards import (  # noqa: F401 - re-exported: the public API of the C export
    BOARDS,
    DEFAULT_BOARD,
    LINKER_STM32F405,
    STARTUP_MPS2,
    STARTUP_STM32F405,
    QemuBoard,
)
from robopolicy.export.c_build import ARM_CFLAGS, HOST_CFLAGS, build_arm, build_host, qemu_command, run_qemu
from robopolicy.export.c_sources import CExportError, template

SUPPORTED = ("mlp", "sfp", "flow")
FLOAT_TOL = 1e-4  # self-test tolerance, relative to (1 + |expected|), float build
INT8_TOL = 1e-3  # int8 build: compared against the dequantized net, so only summation order differs


def _layers(policy: nn.Module) -> list[tuple[str, Any]]:
    """The MLP as [("linear", (W, b)), ("relu"|"tanh"|"elu", None), ...]."""
    cfg = policy.config
    if getattr(cfg, "layer_norm", False):
        raise CExportError("C export: MLP with layer_norm=True is not supported (train with layer_norm=False)")
    if getattr(policy.encoder, "camera_keys", []):
        raise CExportError(f"C export: camera inputs {policy.encoder.camera_keys} are not supported")
    out: list[tuple[str, Any]] = []
    for m in policy.net:
        if isinstance(m, nn.Linear):
            out.append(("linear", (m.weight.detach().double().cpu().numpy(), m.bias.detach().double().cpu().numpy())))
        elif isinstance(m, nn.ReLU):
            out.append(("relu", None))
        elif isinstance(m, nn.Tanh):
            out.append(("tanh", None))
        elif isinstance(m, nn.ELU):
            if m.alpha != 1.0:
                raise CExportError("C export: ELU with alpha != 1 is not supported")
            out.append(("elu", None))
        else:
            raise CExportError(f"C export: layer {type(m).__name__} is not supported")
    return out


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: w ~= scale[:, None] * q."""
    m = np.abs(w).max(axis=1)
    scale = np.where(m > 0, m / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _norm_params(policy: nn.Module, key: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) so normalized = (x - center) / scale; identity -> (0, 1)."""
    mode, center, scale = policy.normalizer._params(key)
    c = np.broadcast_to(center.detach().cpu().numpy().astype(np.float32), (size,)).copy()
    s = np.broadcast_to(scale.detach().cpu().numpy().astype(np.float32), (size,)).copy()
    return c, s


def _fmt(a: np.ndarray, per_line: int = 8, kind: str = "float", name: str = "array") -> str:
    """A C initializer list. Refuses non-finite numbers: a NaN or inf weight would fly as a silent 0 or overflow."""
    flat = np.asarray(a).reshape(-1)
    if kind == "float":
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
            values = flat.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise CExportError(f"C export: {name} has {bad.size} non-finite value(s) (first at flat index {bad[0]}: "
                               f"{values[bad[0]]}); expected finite float32 numbers (a diverged or corrupt checkpoint?)")
        items = [f"{float(v)!r}f" for v in values]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if lines else "{0}"


def _exported_linears(policy: nn.Module) -> list[nn.Linear]:
    """The Linear layers the C code holds (and an int8 build quantizes)."""
    if policy.name in ("sfp", "flow"):
        return list(_film_linears(policy.net).values())
    return [m for m in policy.net.modules() if isinstance(m, nn.Linear)]


@contextmanager
def _dequantized(policy: nn.Module, enabled: bool):
    """Temporarily replace the exported Linear weights by their int8-dequantized values.

    Then torch computes what the int8 C code must produce (up to summation order).
    """
    saved = {}
    try:
        if enabled:
            for m in _exported_linears(policy):
                saved[m] = m.weight.detach().clone()
                q, s = quantize_rows(m.weight.detach().double().cpu().numpy())
                m.weight.data.copy_(torch.from_numpy((q.astype(np.float64) * s[:, None]).astype(np.float32)))
        yield policy
    finally:
        for m, w in saved.items():
            m.weight.data.copy_(w)


def _split_history(policy: nn.Module, obs_flat: np.ndarray) -> dict[str, torch.Tensor]:
    """Raw flattened observation histories (N, To*D) -> {key: (N, To, d)} in the encoder's layout."""
    cfg = policy.config
    x = torch.as_tensor(obs_flat, dtype=torch.float32).view(len(obs_flat), cfg.n_obs_steps, -1)
    hist, o = {}, 0
    for f in cfg.input_features:
        d = int(np.prod(f.shape))
        hist[f.key] = x[:, :, o:o + d]
        o += d
    return hist


def _torch_chunk(policy: nn.Module, obs_flat: np.ndarray, int8: bool) -> np.ndarray:
    """(N, T*A) chunk in robot units from raw flattened obs (N, To*D), via the policy's own modules."""
    with _dequantized(policy, int8), torch.no_grad():
        chunk = policy.predict_chunk(_split_history(policy, obs_flat))
    return chunk.reshape(len(obs_flat), -1).cpu().numpy().astype(np.float64)


def sample_observations(policy: nn.Module, n: int, seed: int = 0) -> np.ndarray:
    """Random raw observations (N, obs_dim) spread over the normalization range (robot units)."""
    cfg = policy.config
    centers, scales = [], []
    for f in cfg.input_features:
        c, s = _norm_params(policy, f.key, int(np.prod(f.shape)))
        centers.append(c)
        scales.append(s)
    c = np.tile(np.concatenate(centers), cfg.n_obs_steps)
    s = np.tile(np.concatenate(scales), cfg.n_obs_steps)
    rng = np.random.default_rng(seed)
    return (c + s * rng.uniform(-1.2, 1.2, size=(n, c.size))).astype(np.float32)


def reference_actions(policy: nn.Module, obs: np.ndarray, int8: bool = False) -> np.ndarray:
    """What ``policy_step`` must return for raw observations (N, obs_dim): (N, A), robot units."""
    cfg = policy.config
    a = cfg.action_dim
    chunk = _torch_chunk(policy, obs, int8).reshape(len(obs), cfg.horizon, a)
    return chunk[:, cfg.n_obs_steps - 1]


def _linear_c() -> str:
    """The C matrix-vector product every family uses (``c_templates/linear.c``; POLICY_INT8 picks the weight type)."""
    return template("linear.c")


def _weights_c(name: str, w: np.ndarray, b: np.ndarray, int8: bool) -> str:
    """const arrays W<name>, (S<name>,) B<name>, and the argument list linear() takes for them."""
    rows, cols = w.shape
    if int8:
        _fmt(w, name=f"weight W{name}")  # refuse non-finite weights before quantizing them away
        q, s = quantize_rows(w)
        return (f"static const int8_t W{name}[{rows * cols}] = {_fmt(q, 16, 'int')};\n"
                f"static const float S{name}[{rows}] = {_fmt(s, name=f'row scale S{name}')};\n"
                f"static const float B{name}[{rows}] = {_fmt(b, name=f'bias B{name}')};")
    return (f"static const float W{name}[{rows * cols}] = {_fmt(w, name=f'weight W{name}')};\n"
            f"static const float B{name}[{rows}] = {_fmt(b, name=f'bias B{name}')};")


def _linear_args(name: str, int8: bool) -> str:
    return f"W{name}, S{name}, B{name}" if int8 else f"W{name}, B{name}"


def _linear_numpy(m: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return m.weight.detach().double().cpu().numpy(), m.bias.detach().double().cpu().numpy()


def _weight_bytes(linears: list[tuple[np.ndarray, np.ndarray]], int8: bool) -> int:
    return int(sum(w.size * (1 if int8 else 4) + b.size * 4 + (w.shape[0] * 4 if int8 else 0) for w, b in linears))


def _mlp_source(policy: nn.Module, int8: bool) -> tuple[str, dict[str, Any]]:
    """policy.c body for an MLP: forward pass, policy_chunk, policy_step."""
    layers = _layers(policy)
    cfg = policy.config
    obs_dim = cfg.n_obs_steps * sum(int(np.prod(f.shape)) for f in cfg.input_features)
    linears = [p for k, p in layers if k == "linear"]
    n_hyp = getattr(cfg, "n_hypotheses", 1)
    chunk_size = cfg.horizon * cfg.action_dim
    out_dim = chunk_size if n_hyp == 1 else n_hyp * (1 + chunk_size)
    if linears[0][0].shape[1] != obs_dim or linears[-1][0].shape[0] != out_dim:
        raise CExportError("C export: network shape does not match the config's observation/action dims")
    max_width = max(max(w.shape) for w, _ in linears)
    parts = [_weights_c(str(i), w, b, int8) for i, (w, b) in enumerate(linears)]
    parts.append(f"\nstatic float buf_a[{max_width}];\nstatic float buf_b[{max_width}];\n")
    parts.append(_linear_c())
    parts.append(template("activations.c"))
    parts.append("""
/* Normalized chunk in buf (returns pointer), or 0 when obs is not finite. */
static const float *forward(const float *obs)
{
    int i;
    float *x = buf_a, *y = buf_b, *t;
    if (!all_finite(obs, POLICY_OBS_DIM)) return 0;
    for (i = 0; i < POLICY_OBS_DIM; ++i) x[i] = (obs[i] - IN_CENTER[i]) / IN_SCALE[i];""")
    body, idx, last_rows = [], 0, 0
    for kind, p in layers:
        if kind == "linear":
            rows, cols = p[0].shape
            body.append(f"    linear({_linear_args(str(idx), int8)}, x, y, {rows}, {cols}); t = x; x = y; y = t;")
            idx, last_rows = idx + 1, rows
        else:
            body.append(f"    act_{kind}(x, {last_rows});")
    parts.append("\n".join(body))
    # K > 1 hypotheses: the output is K scores then K chunks; keep the best-scored chunk (first on ties, as torch).
    select = "" if n_hyp == 1 else f"""    {{
        int k, best = 0;
        for (k = 1; k < {n_hyp}; ++k) if (x[k] > x[best]) best = k;
        x += {n_hyp} + best * {chunk_size};
    }}
"""
    parts.append(select + """    (void)y;
    return x;
}
""")
    parts.append(template("mlp_api.c"))
    meta = {"n_params": int(sum(w.size + b.size for w, b in linears)), "weight_bytes": _weight_bytes(linears, int8),
            "activations": [k for k, _ in layers if k != "linear"], "n_hypotheses": n_hyp}
    return "\n".join(parts), meta


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


def _film_linears(net: nn.Module) -> dict[str, nn.Linear]:
    """A FiLM velocity MLP's Linear layers by their C name (the time branch becomes a table instead)."""
    named = {"obs1": net.obs[0], "obs2": net.obs[2], "inp": net.inp, "out": net.out[2]}
    for k, block in enumerate(net.blocks):
        named |= {f"film{k}": block.film, f"fc1_{k}": block.fc1, f"fc2_{k}": block.fc2}
    return named


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


def export_c(policy: nn.Module, out_dir: str | Path, int8: bool = False, n_selftest: int = 4,
             seed: int = 0, prefix: str = "policy") -> Path:
    """Write C99 sources for ``policy`` into ``out_dir`` (see the module docstring). Returns out_dir."""
    if prefix != "policy":
        raise CExportError("only prefix='policy' is supported")
    name = getattr(policy, "name", None)
    if name not in SUPPORTED:
        raise CExportError(f"C export supports policy families {SUPPORTED}, got {name!r}")
    if getattr(policy.encoder, "camera_keys", []):
        raise CExportError(f"C export: camera inputs {policy.encoder.camera_keys} are not supported")
    policy = policy.eval()
    cfg = policy.config
    is_sfp, is_flow = name == "sfp", name == "flow"
    body, family_meta = {"sfp": _sfp_source, "flow": _flow_source, "mlp": _mlp_source}[name](policy, int8)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    step_dim = sum(int(np.prod(f.shape)) for f in cfg.input_features)
    obs_dim = cfg.n_obs_steps * step_dim
    act_dim = cfg.action_dim
    in_center = np.tile(np.concatenate([_norm_params(policy, f.key, int(np.prod(f.shape)))[0]
                                        for f in cfg.input_features]), cfg.n_obs_steps)
    in_scale = np.tile(np.concatenate([_norm_params(policy, f.key, int(np.prod(f.shape)))[1]
                                       for f in cfg.input_features]), cfg.n_obs_steps)
    act_center, act_scale = _norm_params(policy, policy.action_key, act_dim)

    # ---- policy.h -----------------------------------------------------------------------------
    feat_doc = "\n".join(f" *   {f.key}: {int(np.prod(f.shape))}" for f in cfg.input_features)
    header = f"""/* Generated by robopolicy.export.c_export -- do not edit. C99, no malloc, no dependencies but libm. */
#ifndef ROBOPOLICY_POLICY_H
#define ROBOPOLICY_POLICY_H

#define POLICY_FAMILY_{name.upper()} 1
#define POLICY_N_OBS_STEPS {cfg.n_obs_steps}
#define POLICY_STEP_DIM {step_dim}
#define POLICY_OBS_DIM {obs_dim}
#define POLICY_ACTION_DIM {act_dim}
#define POLICY_HORIZON {cfg.horizon}
#define POLICY_FPS {int(round(cfg.fps)) if cfg.fps else 0}   /* control rate of the training demos (Hz), 0 = unknown */
#define POLICY_INT8 {1 if int8 else 0}
#define POLICY_N_SELFTEST {n_selftest}

/* obs: raw observation history in robot units, oldest first, POLICY_N_OBS_STEPS x POLICY_STEP_DIM.
 * Each step concatenates:
{feat_doc}
 * action: POLICY_ACTION_DIM numbers (robot units) for the latest observation. */
{template("policy_api.h")}
#endif
"""
    (out_dir / "policy.h").write_text(header)
    (out_dir / "policy.c").write_text("\n".join([
        "/* Generated by robopolicy.export.c_export -- do not edit. */",
        "#include <math.h>",
        "#include <stdint.h>",
        '#include "policy.h"',
        "",
        f"static const float IN_CENTER[{obs_dim}] = {_fmt(in_center, name='observation center')};",
        f"static const float IN_SCALE[{obs_dim}] = {_fmt(in_scale, name='observation scale')};",
        f"static const float ACT_CENTER[{act_dim}] = {_fmt(act_center, name='action center')};",
        f"static const float ACT_SCALE[{act_dim}] = {_fmt(act_scale, name='action scale')};",
        "",
        body,
    ]))

    # ---- self-test vectors ----------------------------------------------------------------------
    n = max(n_selftest, 1)
    obs = sample_observations(policy, n, seed=seed)
    tol = INT8_TOL if int8 else FLOAT_TOL
    if is_sfp:
        starts, seeds = sample_starts(policy, n, seed=seed + 1), [1000 + 7 * i for i in range(n)]
        expected = reference_sfp_actions(policy, obs, starts, seeds, int8)
        extra = (f"static const float SELFTEST_START[{n * act_dim}] = {_fmt(starts)};\n"
                 f"static const uint32_t SELFTEST_SEED[{n}] = {_fmt(np.array(seeds), 8, 'int')};\n")
        call = ("policy_sfp_step(SELFTEST_OBS + n * POLICY_OBS_DIM, SELFTEST_START + n * POLICY_ACTION_DIM, "
                "SELFTEST_SEED[n], action)")
    elif is_flow:
        seeds = [1000 + 7 * i for i in range(n)]
        expected = reference_flow_actions(policy, obs, seeds, int8)
        extra = f"static const uint32_t SELFTEST_SEED[{n}] = {_fmt(np.array(seeds), 8, 'int')};\n"
        call = "policy_flow_step(SELFTEST_OBS + n * POLICY_OBS_DIM, SELFTEST_SEED[n], action)"
    else:
        expected, extra = reference_actions(policy, obs, int8), ""
        call = "policy_step(SELFTEST_OBS + n * POLICY_OBS_DIM, action)"
    st = f"""/* Generated by robopolicy.export.c_export -- self-test vectors computed with torch. */
#include <math.h>
#include <stdint.h>
#include "policy.h"

#if POLICY_N_SELFTEST > 0
static const float SELFTEST_OBS[{n * obs_dim}] = {_fmt(obs, name='self-test observations')};
static const float SELFTEST_ACTION[{n * act_dim}] = {_fmt(expected, name='self-test actions (torch)')};
{extra}#endif
#define SELFTEST_CALL(n) {call.replace("n * POLICY", "(n) * POLICY").replace("SEED[n]", "SEED[(n)]")}
#define SELFTEST_TOL {tol!r}f

"""
    (out_dir / "policy_selftest.c").write_text(st + template("policy_selftest.c"))
    (out_dir / "main_selftest.c").write_text(template("main_selftest.c"))
    (out_dir / "main_eval.c").write_text(template("main_eval.c"))
    meta = {
        "family": name,
        "n_obs_steps": cfg.n_obs_steps, "step_dim": step_dim, "obs_dim": obs_dim, "action_dim": act_dim,
        "horizon": cfg.horizon, "n_action_steps": cfg.n_action_steps, "fps": getattr(cfg, "fps", None),
        "obs_layout": [{"key": f.key, "size": int(np.prod(f.shape))} for f in cfg.input_features],
        "action_key": policy.action_key, "int8": int8, "n_selftest": n_selftest, "selftest_tolerance": tol,
        **family_meta,
    }
    (out_dir / "export.json").write_text(json.dumps(meta, indent=2))
    return out_dir


__all__ = ["ARM_CFLAGS", "BOARDS", "DEFAULT_BOARD", "HOST_CFLAGS", "QemuBoard", "build_arm", "qemu_command", "build_host", "run_qemu",
           "CExportError", "c_gaussian", "export_c", "quantize_rows", "reference_actions", "reference_flow_actions",
           "reference_sfp_actions",
           "sample_observations", "sample_starts", "SUPPORTED"]
