"""Simulation: PushT with dataset-named observations, and the policy evaluation runner.

Names are imported lazily so that ``robopolicy.sim.pusht`` (used by the dataset importer) does not
pull in torch through the evaluator. The runner itself is imported from its module,
``from robopolicy.sim.evaluate import evaluate`` (the package attribute ``evaluate`` is that module).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_pusht_env": "robopolicy.sim.pusht",
    "pusht_features_from_states": "robopolicy.sim.pusht",
    "pusht_obs_mode_for": "robopolicy.sim.pusht",
    "set_pusht_state": "robopolicy.sim.pusht",
    "EpisodeResult": "robopolicy.sim.evaluate",
    "EvalResult": "robopolicy.sim.evaluate",
    "PolicyLike": "robopolicy.sim.evaluate",
    "wilson_interval": "robopolicy.sim.evaluate",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robopolicy.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
