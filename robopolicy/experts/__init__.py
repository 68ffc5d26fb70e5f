"""Scripted expert controllers that produce the same actions a policy would (for demonstrations)."""
