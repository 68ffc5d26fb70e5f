"""Flow-matching policy (``modeling.FlowPolicy``) and fixed-step integrators (``integrators``).

Kept import-free so that the SFP family can use the integrators without registering this family.
"""
