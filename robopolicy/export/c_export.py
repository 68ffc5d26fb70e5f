"""Export a low-dim MLP, Streaming Flow or flow-matching policy as dependency-free C99 for microcontrollers (the Crazyflie route).

Layout: this module generates the MLP's code and writes the exported files; :mod:`robopolicy.export.c_flow`
generates the SFP and flow families, :mod:`robopolicy.export.c_codegen` holds what they share (weights as C
arrays, int8 quantization, the torch references of the self-test vectors); the fixed C lives in real files under
``c_templates/`` (package data, see :mod:`robopolicy.export.c_sources`),
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
from pathlib import Path
from typing import Any

import numpy as np
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
from robopolicy.export.c_codegen import (  # noqa: F401 - quantize_rows, sample_observations: public API
    _fmt,
    _linear_args,
    _linear_c,
    _norm_params,
    _weight_bytes,
    _weights_c,
    quantize_rows,
    reference_actions,
    sample_observations,
)
from robopolicy.export.c_flow import (  # noqa: F401 - re-exported: the public API of the C export
    SEED_INC,
    SEED_MULT,
    _flow_source,
    _sfp_source,
    c_gaussian,
    reference_flow_actions,
    reference_sfp_actions,
    sample_starts,
)
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
    blocks = [_diagonal_blocks(w) for w, _ in linears]
    parts = []
    for i, ((w, b), k) in enumerate(zip(linears, blocks)):
        if k == 1:
            parts.append(_weights_c(str(i), w, b, int8))
            continue
        br, bc = w.shape[0] // k, w.shape[1] // k  # each member's block alone: the zeros are neither stored nor run
        parts += [_weights_c(f"{i}_{j}", w[j * br:(j + 1) * br, j * bc:(j + 1) * bc], b[j * br:(j + 1) * br], int8)
                  for j in range(k)]
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
            k = blocks[idx]
            if k == 1:
                body.append(f"    linear({_linear_args(str(idx), int8)}, x, y, {rows}, {cols}); t = x; x = y; y = t;")
            else:
                br, bc = rows // k, cols // k
                body += [f"    linear({_linear_args(f'{idx}_{j}', int8)}, x + {j * bc}, y + {j * br}, {br}, {bc});"
                         for j in range(k)]
                body.append("    t = x; x = y; y = t;")
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
    stored = [(w, b) if k == 1 else (w[:, : w.shape[1] // k], b) for (w, b), k in zip(linears, blocks)]
    meta = {"n_params": int(sum(w.size + b.size for w, b in stored)), "weight_bytes": _weight_bytes(stored, int8),
            "activations": [k for k, _ in layers if k != "linear"], "n_hypotheses": n_hyp,
            "diagonal_blocks": blocks}
    return "\n".join(parts), meta


def _diagonal_blocks(w: np.ndarray) -> int:
    """K > 1 when ``w`` is block-diagonal with K equal square-tiled blocks and exact zeros elsewhere (an ensemble's
    inner layer, members side by side); 1 otherwise."""
    rows, cols = w.shape
    for k in range(min(rows, cols), 1, -1):
        if rows % k or cols % k:
            continue
        br, bc = rows // k, cols // k
        off = np.ones_like(w, dtype=bool)
        for j in range(k):
            off[j * br:(j + 1) * br, j * bc:(j + 1) * bc] = False
        if not np.any(w[off]):
            return k
    return 1


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
    policy = policy.deployable().eval()
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
