"""Streaming Flow Policy (Jiang et al., CoRL 2025): ``modeling.StreamingFlowPolicy``."""
