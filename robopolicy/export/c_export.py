"""Export a low-dim MLP policy as dependency-free C99 for microcontrollers (the Crazyflie route).

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
relu/tanh/elu. Flow/SFP velocity nets (LayerNorm, Mish, FiLM, sinusoidal time embedding, a
seeded PRNG for the noise) are not exported yet; ``export_c`` raises a clear error for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SUPPORTED = ("mlp",)
FLOAT_TOL = 1e-4  # self-test tolerance, relative to (1 + |expected|), float build
INT8_TOL = 1e-3  # int8 build: compared against the dequantized net, so only summation order differs


ACT_C = {
    "relu": "static void act_relu(float *x, int n) { int i; for (i = 0; i < n; ++i) if (x[i] < 0.0f) x[i] = 0.0f; }",
    "tanh": "static void act_tanh(float *x, int n) { int i; for (i = 0; i < n; ++i) x[i] = tanhf(x[i]); }",
    "elu": "static void act_elu(float *x, int n) { int i; for (i = 0; i < n; ++i) if (x[i] < 0.0f) x[i] = expm1f(x[i]); }",
}


class CExportError(ValueError):
    pass


def _layers(policy: nn.Module) -> list[tuple[str, Any]]:
    """The MLP as [("linear", (W, b)), ("relu"|"tanh"|"elu", None), ...]."""
    name = getattr(policy, "name", None)
    if name not in SUPPORTED:
        raise CExportError(f"C export supports policy families {SUPPORTED}, got {name!r} "
                           "(flow/SFP velocity nets are not exported yet)")
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


def _fmt(a: np.ndarray, per_line: int = 8, kind: str = "float") -> str:
    flat = np.asarray(a).reshape(-1)
    if kind == "float":
        items = [f"{float(np.float32(v))!r}f" if np.isfinite(v) else "0.0f" for v in flat.astype(np.float32)]
        items = [s.replace("inff", "INFINITY") for s in items]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if lines else "{0}"


def _torch_chunk(policy: nn.Module, obs_flat: np.ndarray, int8: bool) -> np.ndarray:
    """(N, T*A) chunk in robot units from raw flattened obs (N, To*D), via the policy's own modules.

    For int8 the Linear weights are temporarily replaced by their dequantized values so the
    expected outputs are what the int8 C code must produce (up to summation order).
    """
    cfg = policy.config
    to = cfg.n_obs_steps
    x = torch.as_tensor(obs_flat, dtype=torch.float32).view(len(obs_flat), to, -1)
    hist, o = {}, 0
    for f in cfg.input_features:
        d = int(np.prod(f.shape))
        hist[f.key] = x[:, :, o:o + d]
        o += d
    saved = {}
    try:
        if int8:
            for i, m in enumerate(policy.net):
                if isinstance(m, nn.Linear):
                    saved[i] = m.weight.detach().clone()
                    q, s = quantize_rows(m.weight.detach().double().cpu().numpy())
                    m.weight.data.copy_(torch.from_numpy((q.astype(np.float64) * s[:, None]).astype(np.float32)))
        with torch.no_grad():
            chunk = policy.predict_chunk(hist)
    finally:
        for i, w in saved.items():
            policy.net[i].weight.data.copy_(w)
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


def export_c(policy: nn.Module, out_dir: str | Path, int8: bool = False, n_selftest: int = 4,
             seed: int = 0, prefix: str = "policy") -> Path:
    """Write C99 sources for ``policy`` into ``out_dir`` (see the module docstring). Returns out_dir."""
    if prefix != "policy":
        raise CExportError("only prefix='policy' is supported")
    policy = policy.eval()
    layers = _layers(policy)
    cfg = policy.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    step_dim = sum(int(np.prod(f.shape)) for f in cfg.input_features)
    obs_dim = cfg.n_obs_steps * step_dim
    act_dim = cfg.action_dim
    horizon = cfg.horizon
    linears = [p for k, p in layers if k == "linear"]
    if linears[0][0].shape[1] != obs_dim or linears[-1][0].shape[0] != horizon * act_dim:
        raise CExportError("C export: network shape does not match the config's observation/action dims")
    max_width = max(max(w.shape) for w, _ in linears)

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
#ifdef __cplusplus
extern "C" {{
#endif

#define POLICY_N_OBS_STEPS {cfg.n_obs_steps}
#define POLICY_STEP_DIM {step_dim}
#define POLICY_OBS_DIM {obs_dim}
#define POLICY_ACTION_DIM {act_dim}
#define POLICY_HORIZON {horizon}
#define POLICY_INT8 {1 if int8 else 0}
#define POLICY_N_SELFTEST {n_selftest}

/* obs: raw observation history in robot units, oldest first, POLICY_N_OBS_STEPS x POLICY_STEP_DIM.
 * Each step concatenates:
{feat_doc}
 * action: POLICY_ACTION_DIM numbers (robot units) for the latest observation.
 * Returns 0, or -1 when an input or output is not finite. Not reentrant (static buffers). */
int policy_step(const float *obs, float *action);
/* The whole chunk, POLICY_HORIZON x POLICY_ACTION_DIM, robot units. */
int policy_chunk(const float *obs, float *chunk);
/* Runs the generated test vectors; returns the number of mismatching outputs (0 = pass). */
int policy_selftest(void);

#ifdef __cplusplus
}}
#endif
#endif
"""
    (out_dir / "policy.h").write_text(header)

    # ---- policy.c -----------------------------------------------------------------------------
    parts = [
        "/* Generated by robopolicy.export.c_export -- do not edit. */",
        "#include <math.h>",
        "#include <stdint.h>",
        '#include "policy.h"',
        "",
        f"static const float IN_CENTER[{obs_dim}] = {_fmt(in_center)};",
        f"static const float IN_SCALE[{obs_dim}] = {_fmt(in_scale)};",
        f"static const float ACT_CENTER[{act_dim}] = {_fmt(act_center)};",
        f"static const float ACT_SCALE[{act_dim}] = {_fmt(act_scale)};",
        "",
    ]
    for i, (w, b) in enumerate(linears):
        rows, cols = w.shape
        if int8:
            q, s = quantize_rows(w)
            parts.append(f"static const int8_t W{i}[{rows * cols}] = {_fmt(q, 16, 'int')};")
            parts.append(f"static const float S{i}[{rows}] = {_fmt(s)};")
        else:
            parts.append(f"static const float W{i}[{rows * cols}] = {_fmt(w)};")
        parts.append(f"static const float B{i}[{rows}] = {_fmt(b)};")
    wtype = "int8_t" if int8 else "float"
    used = {k for k, _ in layers if k != "linear"}

    def W(e: str) -> str:  # noqa: N802 - a weight element as float
        return f"(float){e}" if int8 else e

    def S(acc: str, i: str) -> str:  # noqa: N802 - the row scale
        return f"{acc} * s[{i}]" if int8 else acc

    act_defs = "\n".join(ACT_C[k] for k in sorted(used))
    parts.append(f"""
static float buf_a[{max_width}];
static float buf_b[{max_width}];

/* y = W x + b, W row-major (rows x cols){'; W = diag(s) q' if int8 else ''}. Four rows at a time share each
 * load of x; every row still sums its products in column order (the same order as a plain loop).
 * With a hardware FMA (Cortex-M4F: __ARM_FEATURE_FMA) each product-sum is one fused vfma. */
#if defined(__ARM_FEATURE_FMA)
#define MAC(acc, w, x) ((acc) = fmaf((w), (x), (acc)))
#else
#define MAC(acc, w, x) ((acc) += (w) * (x))
#endif
static void linear(const {wtype} *w,{' const float *s,' if int8 else ''} const float *b, const float *x, float *y, int rows, int cols)
{{
    int i = 0, j;
    for (; i + 4 <= rows; i += 4) {{
        const {wtype} *w0 = w + (long)i * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (j = 0; j < cols; ++j) {{
            const float xj = x[j];
            MAC(a0, {W('w0[j]')}, xj);
            MAC(a1, {W('w1[j]')}, xj);
            MAC(a2, {W('w2[j]')}, xj);
            MAC(a3, {W('w3[j]')}, xj);
        }}
        y[i] = {S('a0', 'i')} + b[i];
        y[i + 1] = {S('a1', 'i + 1')} + b[i + 1];
        y[i + 2] = {S('a2', 'i + 2')} + b[i + 2];
        y[i + 3] = {S('a3', 'i + 3')} + b[i + 3];
    }}
    for (; i < rows; ++i) {{
        const {wtype} *wr = w + (long)i * cols;
        float acc = 0.0f;
        for (j = 0; j < cols; ++j) MAC(acc, {W('wr[j]')}, x[j]);
        y[i] = {S('acc', 'i')} + b[i];
    }}
}}

{act_defs}

static int all_finite(const float *x, int n) {{ int i; for (i = 0; i < n; ++i) if (!isfinite(x[i])) return 0; return 1; }}

/* Normalized chunk in buf (returns pointer), or 0 when obs is not finite. */
static const float *forward(const float *obs)
{{
    int i;
    float *x = buf_a, *y = buf_b, *t;
    if (!all_finite(obs, POLICY_OBS_DIM)) return 0;
    for (i = 0; i < POLICY_OBS_DIM; ++i) x[i] = (obs[i] - IN_CENTER[i]) / IN_SCALE[i];""")
    body = []
    for k, (kind, p) in enumerate(layers):
        if kind == "linear":
            idx = sum(1 for kk, _ in layers[:k] if kk == "linear")
            rows, cols = p[0].shape
            body.append(f"    linear(W{idx},{f' S{idx},' if int8 else ''} B{idx}, x, y, {rows}, {cols}); t = x; x = y; y = t;")
            last_rows = rows
        else:
            body.append(f"    act_{kind}(x, {last_rows});")
    parts.append("\n".join(body))
    parts.append("""    (void)y;
    return x;
}

int policy_chunk(const float *obs, float *chunk)
{
    int i, k;
    const float *z = forward(obs);
    if (!z) return -1;
    for (k = 0; k < POLICY_HORIZON; ++k)
        for (i = 0; i < POLICY_ACTION_DIM; ++i)
            chunk[k * POLICY_ACTION_DIM + i] = z[k * POLICY_ACTION_DIM + i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(chunk, POLICY_HORIZON * POLICY_ACTION_DIM) ? 0 : -1;
}

int policy_step(const float *obs, float *action)
{
    int i;
    const float *z = forward(obs);
    if (!z) return -1;
    z += (POLICY_N_OBS_STEPS - 1) * POLICY_ACTION_DIM;
    for (i = 0; i < POLICY_ACTION_DIM; ++i) action[i] = z[i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(action, POLICY_ACTION_DIM) ? 0 : -1;
}
""")
    (out_dir / "policy.c").write_text("\n".join(parts))

    # ---- self-test vectors ----------------------------------------------------------------------
    obs = sample_observations(policy, max(n_selftest, 1), seed=seed)[:n_selftest] if n_selftest else np.zeros((0, obs_dim))
    expected = reference_actions(policy, obs, int8) if n_selftest else np.zeros((0, act_dim))
    tol = INT8_TOL if int8 else FLOAT_TOL
    st = f"""/* Generated by robopolicy.export.c_export -- self-test vectors computed with torch. */
#include <math.h>
#include "policy.h"

#if POLICY_N_SELFTEST > 0
static const float SELFTEST_OBS[{max(n_selftest, 1) * obs_dim}] = {_fmt(obs)};
static const float SELFTEST_ACTION[{max(n_selftest, 1) * act_dim}] = {_fmt(expected)};
#endif

int policy_selftest(void)
{{
    int bad = 0;
#if POLICY_N_SELFTEST > 0
    int n, i;
    float action[POLICY_ACTION_DIM];
    for (n = 0; n < POLICY_N_SELFTEST; ++n) {{
        if (policy_step(SELFTEST_OBS + n * POLICY_OBS_DIM, action) != 0) {{ bad += POLICY_ACTION_DIM; continue; }}
        for (i = 0; i < POLICY_ACTION_DIM; ++i) {{
            float e = SELFTEST_ACTION[n * POLICY_ACTION_DIM + i];
            if (!(fabsf(action[i] - e) <= {tol!r}f * (1.0f + fabsf(e)))) ++bad;
        }}
    }}
#endif
    return bad;
}}
"""
    (out_dir / "policy_selftest.c").write_text(st)
    (out_dir / "main_selftest.c").write_text("""/* Exit code = self-test verdict (0 = pass). Runs on the host or under QEMU with semihosting. */
#include <stdio.h>
#include "policy.h"

int main(void)
{
    int bad = policy_selftest();
    printf("policy_selftest: %s (%d mismatches)\\n", bad ? "FAIL" : "PASS", bad);
    return bad ? 1 : 0;
}
""")
    (out_dir / "main_eval.c").write_text("""/* Host helper: reads POLICY_OBS_DIM floats per observation on stdin, prints the action (%.9g). */
#include <stdio.h>
#include "policy.h"

int main(void)
{
    float obs[POLICY_OBS_DIM], action[POLICY_ACTION_DIM];
    int i;
    for (;;) {
        for (i = 0; i < POLICY_OBS_DIM; ++i)
            if (scanf("%f", &obs[i]) != 1) return 0;
        if (policy_step(obs, action) != 0) { printf("nan\\n"); continue; }
        for (i = 0; i < POLICY_ACTION_DIM; ++i) printf(i ? " %.9g" : "%.9g", (double)action[i]);
        printf("\\n");
    }
}
""")
    n_params = sum(w.size + b.size for w, b in linears)
    meta = {
        "family": policy.name,
        "n_obs_steps": cfg.n_obs_steps, "step_dim": step_dim, "obs_dim": obs_dim, "action_dim": act_dim,
        "horizon": horizon, "obs_layout": [{"key": f.key, "size": int(np.prod(f.shape))} for f in cfg.input_features],
        "action_key": policy.action_key, "int8": int8, "n_params": int(n_params),
        "weight_bytes": int(sum(w.size * (1 if int8 else 4) + b.size * 4 + (w.shape[0] * 4 if int8 else 0) for w, b in linears)),
        "n_selftest": n_selftest, "selftest_tolerance": tol,
        "activations": [k for k, _ in layers if k != "linear"],
    }
    (out_dir / "export.json").write_text(json.dumps(meta, indent=2))
    return out_dir


# ---- building and running the generated code (tests, bench, CI) ---------------------------------
HOST_CFLAGS = ["-std=c99", "-Wall", "-Werror", "-O2"]
ARM_CFLAGS = ["-std=c99", "-Wall", "-Werror", "-O2", "-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16",
              "-mfloat-abi=hard"]
# QEMU's mps2-an386 (Cortex-M4 FPGA image) runs semihosting ELFs; newlib's crt0 lacks the vector
# table an M-profile core boots from, so STARTUP_M4_QEMU supplies one at address 0.
ARM_LDFLAGS = ["--specs=rdimon.specs", "-Wl,--section-start=.vectors=0x0"]
QEMU_CMD = ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", "enable=on,target=native"]
STARTUP_M4_QEMU = r"""/* Minimal Cortex-M4F boot for QEMU mps2-an386 + newlib rdimon (semihosting): a vector table at
 * address 0, FPU enabled, then newlib's _start (clears .bss, sets up the heap/stack, calls main,
 * exits through semihosting so the exit code becomes QEMU's). */
extern void _start(void);
void robopolicy_reset_handler(void);
static void fault_handler(void) { for (;;) { } }

#define CPACR (*(volatile unsigned long *)0xE000ED88UL)

__attribute__((naked, noreturn)) void robopolicy_reset_handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b _start\n");
}

__attribute__((section(".vectors"), used)) void (*const robopolicy_vectors[16])(void) = {
    (void (*)(void))0x20400000UL, /* initial SP: top of the 4 MiB SRAM at 0x20000000 */
    robopolicy_reset_handler,
    fault_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    0, 0, 0, 0,
    fault_handler, fault_handler, 0, fault_handler, fault_handler,
};
"""


def build_host(out_dir: str | Path, main: str = "main_selftest.c", exe: str | None = None, cc: str = "gcc") -> Path:
    """Compile the exported sources plus ``main`` for the host; returns the executable."""
    import subprocess

    out_dir = Path(out_dir)
    exe_path = out_dir / (exe or Path(main).stem)
    srcs = [str(out_dir / f) for f in ("policy.c", "policy_selftest.c", main)]
    subprocess.run([cc, *HOST_CFLAGS, "-o", str(exe_path), *srcs, "-lm"], check=True, capture_output=True, text=True)
    return exe_path


def build_arm(out_dir: str | Path, main: str = "main_selftest.c", exe: str | None = None,
              extra_cflags: tuple[str, ...] = ()) -> Path:
    """Cross-compile for Cortex-M4F (semihosting, QEMU mps2-an386); returns the ELF."""
    import subprocess

    out_dir = Path(out_dir)
    (out_dir / "startup_m4_qemu.c").write_text(STARTUP_M4_QEMU)
    elf = out_dir / (exe or (Path(main).stem + ".elf"))
    srcs = [str(out_dir / f) for f in ("startup_m4_qemu.c", "policy.c", "policy_selftest.c", main)]
    subprocess.run(["arm-none-eabi-gcc", *ARM_CFLAGS, *extra_cflags, *ARM_LDFLAGS, "-o", str(elf), *srcs, "-lm"],
                   check=True, capture_output=True, text=True)
    return elf


def run_qemu(elf: str | Path, timeout: float = 60.0, extra: tuple[str, ...] = ()):
    """Run a semihosting ELF under QEMU; the CompletedProcess's returncode is the program's exit code."""
    import subprocess

    return subprocess.run([*QEMU_CMD, *extra, "-kernel", str(elf)], capture_output=True, text=True, timeout=timeout)


__all__ = ["ARM_CFLAGS", "ARM_LDFLAGS", "HOST_CFLAGS", "QEMU_CMD", "build_arm", "build_host", "run_qemu",
           "CExportError", "export_c", "quantize_rows", "reference_actions", "sample_observations", "SUPPORTED"]
