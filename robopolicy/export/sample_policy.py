"""Export a sample policy shaped like the hover policy (22 inputs, 4 outputs, 500 Hz; random weights) to the
directory given, for the Crazyflie `make check` and firmware build when no trained policy is at hand.

    python -m robopolicy.export.sample_policy DIR [--int8]
"""

import sys

import torch

from robopolicy.data.normalize import Normalizer
from robopolicy.export.c_export import export_c
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.mlp.configuration import MLPConfig
from robopolicy.policies.mlp.modeling import MLPPolicy

if __name__ == "__main__":
    int8 = "--int8" in sys.argv
    out = [a for a in sys.argv[1:] if a != "--int8"][0]
    cfg = MLPConfig(n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=[32, 32], activation="relu", fps=500,
                    input_features=[FeatureSpec("observation.state", (22,))],
                    output_features=[FeatureSpec("action", (4,))],
                    normalization={"observation.state": "identity", "action": "identity"})
    torch.manual_seed(0)
    export_c(MLPPolicy(cfg, Normalizer({}, cfg.normalization)).eval(), out, int8=int8)
    print(f"sample policy written to {out}")
