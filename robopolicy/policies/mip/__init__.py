"""MIP, the two-step minimal iterative policy (``modeling.MipPolicy``); its network is flow's chunk backbone."""
