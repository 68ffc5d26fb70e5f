"""Training checkpoints that survive ``kill -9``.

A checkpoint is a directory ``checkpoints/step-XXXXXXXX`` holding the EMA policy (loadable on its
own) and the full training state (raw weights, optimizer, EMA, LR schedule, RNG). It is written
under a temporary name and renamed into place, and ``checkpoints/LATEST`` is replaced atomically
afterwards, so at any instant LATEST names a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robopolicy.data.checksums import file_digest
from robopolicy.policies.base import Policy
from robopolicy.policies.registry import load_policy
from robopolicy.utils.io import atomic_write_text, fsync_dir
from robopolicy.utils.state_dict import strip_compile_prefix

LATEST = "LATEST"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_CHECKSUMS = "training_state.checksums.json"  # sizes and sha256 of the two files above
POLICY_DIR = "policy"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(root: Path, step: int, policy_to_save, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{checkpoint_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    policy_to_save.save(tmp / POLICY_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(meta, indent=2))
    digests = {name: file_digest(tmp / name) for name in (STATE_TENSORS, STATE_JSON)}
    (tmp / STATE_CHECKSUMS).write_text(json.dumps(digests, indent=1))
    for path in (tmp / STATE_TENSORS, tmp / STATE_JSON, tmp / STATE_CHECKSUMS):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / STATE_JSON).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint LATEST names, or the newest complete one if LATEST is missing or stale."""
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_JSON).is_file() and (candidate / STATE_TENSORS).is_file():
            return candidate
    complete = [p for p in list_checkpoints(root) if (p / STATE_TENSORS).is_file()]
    return complete[-1] if complete else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training state, after checking it against its checksums (checkpoints that predate them load as is)."""
    sums = path / STATE_CHECKSUMS
    if sums.is_file():
        expected = json.loads(sums.read_text())
        for name in (STATE_TENSORS, STATE_JSON):
            if file_digest(path / name) != expected.get(name):
                raise ValueError(f"{path / name}: size or sha256 differs from {sums} (the checkpoint is corrupt); "
                                 "resume from an earlier checkpoint by pointing LATEST at it")
    return load_file(str(path / STATE_TENSORS)), json.loads((path / STATE_JSON).read_text())


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as safetensors-able tensors plus JSON (no pickle)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training network's state dict out of a checkpoint's tensors (saved as ``model.*``, compiled or not)."""
    return strip_compile_prefix({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})


def raw_weights_policy(checkpoint: Path) -> Policy:
    """The checkpoint's policy with the raw (not EMA-averaged) training weights: what the run would have produced
    with ``ema=false`` at that step, so EMA's effect can be judged from one run instead of two."""
    policy = load_policy(checkpoint / POLICY_DIR)
    tensors, _ = load_checkpoint(checkpoint)
    raw = model_weights(tensors)
    if not raw:
        raise KeyError(f"{checkpoint / STATE_TENSORS}: no 'model.*' tensors (the raw weights); is it a training checkpoint?")
    policy.load_state_dict(raw)
    return policy
