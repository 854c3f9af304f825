"""The Bradley-Terry loss for reward models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Mean of ``-logsigmoid(r_c - r_r - margin)`` plus ``center_coef * mean((r_c + r_r)^2)``.

    The centering term (as in TRL's ``center_rewards_coefficient``) keeps rewards near zero mean,
    which RL recipes that do not normalize rewards rely on.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss
