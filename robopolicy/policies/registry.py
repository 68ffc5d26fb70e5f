"""Policy families by name, so configs and checkpoints can say ``type: diffusion``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robopolicy.policies.base import Policy

_REGISTRY: dict[str, type[Policy]] = {}
# Families are imported lazily so that importing one does not pull in the others.
_BUILTIN_MODULES = {
    "diffusion": "robopolicy.policies.diffusion.modeling",
    "flow": "robopolicy.policies.flow.modeling",
    "sfp": "robopolicy.policies.sfp.modeling",
    "act": "robopolicy.policies.act.modeling",
    "mlp": "robopolicy.policies.mlp.modeling",
    "mip": "robopolicy.policies.mip.modeling",
}


def register_policy(name: str):
    """Class decorator: make a policy family available under ``name``."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"policy family {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_policy_class(name: str) -> type[Policy]:
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown policy family {name!r}; available: {available_policies()}")
    return _REGISTRY[name]


def available_policies() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def load_policy(directory: str | Path, map_location: str = "cpu") -> Policy:
    """Load any checkpoint directory written by :meth:`Policy.save`, whatever its family."""
    from robopolicy.policies.base import read_policy_config

    config = read_policy_config(directory)
    return get_policy_class(config.type).from_pretrained(directory, map_location=map_location)
