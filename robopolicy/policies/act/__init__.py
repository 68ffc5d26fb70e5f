"""ACT: Action Chunking with Transformers (Zhao et al., RSS 2023)."""
