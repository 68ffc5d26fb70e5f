"""MLP behaviour cloning: the deterministic baseline (and the one that fits on a microcontroller)."""
