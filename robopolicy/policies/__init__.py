"""Policy families behind one interface (:class:`robopolicy.policies.base.Policy`)."""

from robopolicy.policies.base import FeatureSpec, Policy, PolicyConfig
from robopolicy.policies.registry import available_policies, get_policy_class, load_policy, register_policy

__all__ = [
    "FeatureSpec",
    "Policy",
    "PolicyConfig",
    "available_policies",
    "get_policy_class",
    "load_policy",
    "register_policy",
]
