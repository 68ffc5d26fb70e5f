"""Multiple-hypothesis chunk prediction for the deterministic families (MLP, ACT).

A regressor trained on demonstrations that go either way around an obstacle answers between the ways.
Predicting K candidate chunks plus a score for each, training with a relaxed winner-takes-all loss
(each demonstration pulls mostly on its nearest candidate) and a cross-entropy that teaches the scores
which candidate won, lets inference return the best-scored candidate: one whole mode, from one
deterministic forward pass (no sampling, so the exported graph and the C code stay pure functions).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def check_hypotheses_config(family: str, n_hypotheses: int, wta_epsilon: float, score_weight: float) -> None:
    if n_hypotheses < 1:
        raise ValueError(f"{family}: n_hypotheses must be >= 1, got {n_hypotheses}")
    if not 0 <= wta_epsilon < 1 or score_weight < 0:
        raise ValueError(f"{family}: wta_epsilon must be in [0, 1) and score_weight >= 0, got {wta_epsilon}, "
                         f"{score_weight}")


def best_hypothesis(scores: Tensor, candidates: Tensor) -> Tensor:
    """The best-scored candidate chunk: scores (B, K), candidates (B, K, T, A) -> (B, T, A); first on ties."""
    _, _, horizon, action_dim = candidates.shape
    best = scores.argmax(dim=-1).view(-1, 1, 1, 1).expand(-1, 1, horizon, action_dim)
    return candidates.gather(1, best).squeeze(1)


def winner_takes_all_loss(scores: Tensor, candidates: Tensor, target: Tensor, loss: str = "l1",
                          wta_epsilon: float = 0.05, score_weight: float = 0.1) -> Tensor:
    """Relaxed winner-takes-all regression plus the scores' cross-entropy against the winner.

    The winner is the candidate nearest the demonstrated chunk (mean L1 or squared error). It gets
    1 - epsilon of the regression loss and every candidate shares epsilon, so no candidate starves.
    """
    error = candidates - target[:, None]
    distance = (error.abs() if loss == "l1" else error.square()).flatten(2).mean(-1)  # (B, K)
    winner = distance.argmin(dim=-1)
    nearest = distance.gather(1, winner[:, None]).squeeze(1)
    regression = ((1 - wta_epsilon) * nearest + wta_epsilon * distance.mean(-1)).mean()
    return regression + score_weight * F.cross_entropy(scores, winner)
